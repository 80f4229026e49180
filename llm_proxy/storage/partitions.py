"""Monthly partitions of the PostgreSQL table: made ahead by the writer, dropped whole by prune.

schema.sql makes the table `PARTITION BY RANGE (ts)` with a default partition, so
an insert never fails for want of a partition. The writer creates the partition
of this month and the next (`<table>_pYYYYMM`, UTC month bounds) at connect and
when the month turns. Should rows already sit in the default partition for a
month being created (a partition made late, or dropped by hand), they are moved
into it in the same transaction: deleting from the default partition directly
fires no trigger of the parent table, so the hourly rollup is untouched (the rows
only change partition).

A table made by an older version is not partitioned; it keeps working as it is
(`partitioned` says so), and `llm-proxy db migrate` converts it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

logger = logging.getLogger(__name__)

_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start.year:04d}{start.month:02d}"


def partitioned(conn: psycopg.Connection, table: str) -> bool:
    """Is `table` a partitioned table (made by this version's schema.sql)?"""
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
    return bool(row) and row[0] in ("p", b"p")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start: datetime | None  # None: the default partition
    end: datetime | None


def partitions(conn: psycopg.Connection, table: str) -> list[Partition]:
    """The table's partitions with their bounds, oldest first, the default partition last."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)", (table,)
    ).fetchall()
    found: list[Partition] = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            found.append(Partition(name, _timestamp(match.group(1)), _timestamp(match.group(2))))
        else:
            found.append(Partition(name, None, None))
    return sorted(found, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC)))


def _timestamp(text: str) -> datetime:
    """A bound as pg_get_expr prints it ('2026-11-01 00:00:00+00', in the session's time zone)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def ensure_month(conn: psycopg.Connection, table: str, start: datetime) -> bool:
    """The partition of the month beginning at `start`, made if missing (moving any of its rows out
    of the default partition). Runs in the caller's transaction; True if it made one."""
    name = partition_name(table, start)
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:  # type: ignore[index]
        return False
    end = next_month(start)
    bounds = (start.isoformat(), end.isoformat())
    default = f"{table}_default"
    waiting = conn.execute("SELECT to_regclass(%s)", (default,)).fetchone()[0] is not None  # type: ignore[index]
    if waiting:
        waiting = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {default} WHERE ts >= %s AND ts < %s)",
                               bounds).fetchone()[0]  # type: ignore[index]
    if not waiting:
        conn.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({_literal(bounds[0])}) "
                     f"TO ({_literal(bounds[1])})")
        return True
    # Rows for this month wait in the default partition: move them into the new partition.
    conn.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)")
    conn.execute(f"WITH moved AS (DELETE FROM {default} WHERE ts >= %s AND ts < %s RETURNING *) "
                 f"INSERT INTO {name} SELECT * FROM moved", bounds)
    conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({_literal(bounds[0])}) "
                 f"TO ({_literal(bounds[1])})")
    logger.info("llm-proxy moved rows of %s from %s into the new partition %s", start.strftime("%Y-%m"), default,
                name)
    return True


def _literal(text: str) -> str:
    """A timestamp literal for DDL (which takes no parameters); `text` is an isoformat we made."""
    if not re.fullmatch(r"[0-9T:+\- ]+", text):
        raise ValueError(f"not a timestamp: {text!r}")
    return f"'{text}'"


def ensure_ahead(conn: psycopg.Connection, table: str, now: datetime, months: int = 2) -> list[str]:
    """This month's partition and the next ones (`months` in all), in one transaction."""
    made = []
    start = month_start(now)
    with conn.transaction():
        for _ in range(months):
            if ensure_month(conn, table, start):
                made.append(partition_name(table, start))
            start = next_month(start)
    return made
