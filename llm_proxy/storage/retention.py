"""Dropping old data: bodies after llm_body_retention_days, rows with `llm-proxy db prune`.

Both end by freeing the body parts no row uses any more. A part's `seen` is the
last day (UTC) a row using it was written (the writer raises it once a day per
part), so a part with `seen` before the cutoff's day is used only by rows older
than the cutoff: those rows lost their bodies or are gone. No scan of the rows
is needed to find them.

On a partitioned PostgreSQL table, prune drops the whole months that end before
the cutoff (cheap: no row-by-row delete, no bloat) and deletes the rest row by
row. Dropping a partition fires no trigger, so the rollups' days of that month
(`<table>_hourly` and `_daily`, if the control plane keeps them) are rebuilt with it, in
the same transaction: the rollup stays equal to the rows. Row deletes and body
updates go through the parent table, whose statement triggers keep the rollup.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from .dsn import Database
from .partitions import partitioned, partitions
from .schema import bodies_table

logger = logging.getLogger(__name__)

BATCH = 5000  # rows per body-dropping UPDATE: short transactions, little to redo


@dataclass(slots=True)
class Pruned:
    partitions: list[str]
    rows: int = 0
    bodies: int = 0  # rows whose bodies were dropped
    parts: int = 0


class Retention:
    """One connection to the rows' database for retention work (the CLI, the retention worker)."""

    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table
        self.postgres = database.kind == "postgresql"
        self._conn: Any = None

    def connect(self) -> None:
        self.close()
        if self.postgres:
            import psycopg

            self._conn = psycopg.connect(self.database.target, connect_timeout=10,
                                         application_name="llm-proxy retention", options="-c TimeZone=UTC")
        else:
            # mode=rw: a mistyped path is an error, not a new empty database
            self._conn = sqlite3.connect(f"file:{quote(self.database.target)}?mode=rw", uri=True, timeout=30,
                                         isolation_level=None)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> Retention:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ts(self, moment: datetime) -> Any:
        return moment if self.postgres else moment.isoformat()  # SQLite keeps isoformat text

    def _day(self, moment: datetime) -> Any:
        return moment.date() if self.postgres else moment.date().isoformat()

    # --- bodies -----------------------------------------------------------------------

    def drop_bodies(self, cutoff: datetime) -> Pruned:
        """Bodies of rows older than `cutoff` set to NULL (rows kept), then unused parts freed."""
        done = Pruned([])
        if self.postgres:
            sql = (f"UPDATE {self.table} SET request_body = NULL, response_body = NULL WHERE (id, ts) IN "
                   f"(SELECT id, ts FROM {self.table} WHERE ts < %s "
                   f"AND (request_body IS NOT NULL OR response_body IS NOT NULL) LIMIT {BATCH})")
            while True:
                with self._conn.transaction():
                    count = self._conn.execute(sql, (cutoff,)).rowcount
                done.bodies += count
                if count < BATCH:
                    break
        else:
            sql = (f"UPDATE {self.table} SET request_body = NULL, response_body = NULL WHERE id IN "
                   f"(SELECT id FROM {self.table} WHERE ts < ? "
                   f"AND (request_body IS NOT NULL OR response_body IS NOT NULL) LIMIT {BATCH})")
            while True:
                count = self._conn.execute(sql, (self._ts(cutoff),)).rowcount
                done.bodies += count
                if count < BATCH:
                    break
        done.parts = self.free_parts(cutoff)
        return done

    def free_parts(self, cutoff: datetime) -> int:
        """Delete the parts no row at or after `cutoff` can use (their `seen` is before its day)."""
        sql = f"DELETE FROM {bodies_table(self.table)} WHERE seen < {'%s' if self.postgres else '?'}"
        if self.postgres:
            with self._conn.transaction():
                return int(self._conn.execute(sql, (self._day(cutoff),)).rowcount)
        return int(self._conn.execute(sql, (self._day(cutoff),)).rowcount)

    # --- rows -------------------------------------------------------------------------

    def prune(self, cutoff: datetime) -> Pruned:
        """Rows older than `cutoff` deleted (whole monthly partitions dropped where they can be),
        then unused parts freed."""
        done = Pruned([])
        if not self.postgres:
            done.rows = int(self._conn.execute(f"DELETE FROM {self.table} WHERE ts < ?",
                                               (self._ts(cutoff),)).rowcount)
            done.parts = self.free_parts(cutoff)
            return done
        conn = self._conn
        with conn.transaction():
            if partitioned(conn, self.table):
                rebuild = conn.execute("SELECT to_regprocedure(%s)",
                                       (f"{self.table}_rollup_rebuild(timestamptz, timestamptz)",)).fetchone()[0]
                for part in partitions(conn, self.table):
                    if part.end is None or part.start is None or part.end > cutoff:
                        continue
                    done.rows += conn.execute(f"SELECT count(*) FROM {part.name}").fetchone()[0]
                    conn.execute(f"DROP TABLE {part.name}")
                    if rebuild is not None:  # DROP fires no trigger: the rollups' days of the month go too
                        conn.execute(f"SELECT {self.table}_rollup_rebuild(%s, %s)", (part.start, part.end))
                    done.partitions.append(part.name)
            done.rows += int(conn.execute(f"DELETE FROM {self.table} WHERE ts < %s", (cutoff,)).rowcount)
        done.parts = self.free_parts(cutoff)
        return done
