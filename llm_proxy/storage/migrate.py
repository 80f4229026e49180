"""`llm-proxy db migrate`: an unpartitioned table of an older version made partitioned by month.

The proxy works with either kind of table; only a partitioned one lets prune drop
old months whole. The conversion runs in one transaction with the table locked
(stop the proxies first, or their writes wait and then go on): the old table is
renamed away with its indexes and sequence, schema.sql makes the new one, the
month partitions its rows need are made, the rows are copied with their ids, the
sequence continues after them, and the old table is dropped. The hourly rollup,
if there is one, is installed again on the new table and refilled from the rows by the
CLI (the control plane owns that DDL).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg

from ..record import COLUMNS
from .partitions import ensure_month, month_start, next_month, partitioned
from .postgres import _SCHEMA_LOCK
from .schema import full_view, schema_for

logger = logging.getLogger(__name__)


def migrate(conn: psycopg.Connection, table: str) -> int | None:
    """Convert `table` to the partitioned layout; the number of rows moved, or None if it already is."""
    old = f"{table}_unpartitioned"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:  # type: ignore[index]
            conn.execute(schema_for(table).encode())
            return None
        if partitioned(conn, table):
            return None
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        conn.execute(f"DROP VIEW IF EXISTS {full_view(table)}")
        conn.execute(f"ALTER TABLE {table} RENAME TO {old}")
        for (index,) in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%s)",
            (old,),
        ).fetchall():
            if index.startswith(table):
                conn.execute(f"ALTER INDEX {index} RENAME TO {old}{index[len(table):]}")
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (old,)).fetchone()[0]  # type: ignore[index]
        if sequence:
            conn.execute(f"ALTER SEQUENCE {sequence} RENAME TO {old}_id_seq")
        conn.execute(schema_for(table).encode())
        first, last = conn.execute(f"SELECT min(ts), max(ts) FROM {old}").fetchone()  # type: ignore[misc]
        now = datetime.now(UTC)
        start = month_start(first or now)
        end = next_month(month_start(max(last or now, now)))
        while start <= end:
            ensure_month(conn, table, start)
            start = next_month(start)
        columns = ", ".join(("id", *COLUMNS))
        moved = conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {old}").rowcount
        conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT coalesce(max(id), 0) + 1 FROM {table}), "
                     "false)", (table,))
        conn.execute(f"DROP TABLE {old} CASCADE")  # with it the rollup's triggers on it (the CLI reinstalls them)
    logger.info("llm-proxy migrated %s to monthly partitions (%d rows)", table, moved)
    return int(moved)
