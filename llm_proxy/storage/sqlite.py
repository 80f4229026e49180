"""The embedded default: an SQLite file, so the proxy runs with no database server."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..record import COLUMNS
from .bodies import KnownParts, PartCache, prepare
from .schema import bodies_table, sqlite_schema

BODY_INDEXES = (COLUMNS.index("request_body"), COLUMNS.index("response_body"))


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: the column is TEXT, never REAL
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class SqliteSink:
    def __init__(self, path: str, table: str) -> None:
        self.path = Path(path)
        self.table = table
        self._conn: sqlite3.Connection | None = None
        marks = ", ".join("?" for _ in COLUMNS)
        self._insert_sql = f"INSERT OR IGNORE INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"
        self._parts_sql = (
            f"INSERT INTO {bodies_table(table)} AS b (hash, data, seen) VALUES (?, ?, ?) "
            "ON CONFLICT (hash) DO UPDATE SET seen = excluded.seen WHERE b.seen < excluded.seen"
        )
        self.parts = PartCache()
        self.known = KnownParts()  # turns seen lately: recognised again without a parse

    def connect(self) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers (sqlite3 CLI, dashboards) do not block writes
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(sqlite_schema(self.table))
        self.parts.clear()
        self._conn = conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def write(self, rows: Sequence[Sequence[Any]], *, replay: bool = False) -> None:
        """One transaction, parts of large bodies first; INSERT OR IGNORE makes every write
        idempotent, replay or not."""
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        conn = self._conn
        today = datetime.now(UTC).date()
        batch = prepare(rows, BODY_INDEXES, self.parts, today, self.known)
        conn.execute("BEGIN")
        try:
            if batch.parts:
                day = today.isoformat()
                conn.executemany(self._parts_sql, ((h.hex(), data, day) for h, data in sorted(batch.parts.items())))
            conn.executemany(self._insert_sql, ([_sqlite_value(v) for v in row] for row in batch.rows))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.parts.stored(batch.parts, today)

    def spend_since(self, windows: Mapping[str, datetime]) -> dict[str, Decimal]:
        """Sum of cost_usd per key since each key's window start (exact: summed as Decimal)."""
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        sums: dict[str, Decimal] = {}
        for name, start in windows.items():
            rows = self._conn.execute(
                f"SELECT cost_usd FROM {self.table} WHERE key_id = ? AND ts >= ? AND cost_usd IS NOT NULL",
                (name, start.isoformat()),
            )
            sums[name] = sum((Decimal(cost) for (cost,) in rows), Decimal(0))
        return sums

    @staticmethod
    def is_transient(error: Exception) -> bool:
        """Locked, busy or disk trouble is worth retrying; a constraint or type error is a bad row."""
        return isinstance(error, (sqlite3.OperationalError, OSError))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
