"""schema.sql is the only DDL; this module adapts it to a table name and to SQLite."""

from __future__ import annotations

import re
from pathlib import Path

from ..paths import SCHEMA_SQL

DEFAULT_TABLE = "llm_requests"

# SQLite keeps numeric and timestamps as text so that Decimal costs stay exact, and has no
# partitions: its table keeps the plain keys (id, and request_id unique on its own).
_SQLITE_TYPES = (
    (re.compile(r"^-- \[postgresql\]$.*?^-- \[end\]$", re.M | re.S), ""),
    (re.compile(r"^--sqlite: ", re.M), ""),
    (re.compile(r"\bbigserial\s+NOT\s+NULL\b", re.I), "INTEGER PRIMARY KEY"),
    (re.compile(r"\bbigserial\s+PRIMARY\s+KEY\b", re.I), "INTEGER PRIMARY KEY"),  # llm_jobs.seq
    (re.compile(r"^\s*PRIMARY KEY \(id, ts\),\n", re.M), ""),
    (re.compile(r"\bUNIQUE \(request_id, ts\)"), "UNIQUE (request_id)"),
    (re.compile(r"\)\s*PARTITION BY RANGE \(ts\);"), ");"),
    (re.compile(r"\btimestamptz\b", re.I), "TEXT"),
    (re.compile(r"\bjsonb\b", re.I), "TEXT"),
    (re.compile(r"\bnumeric\b", re.I), "TEXT"),
    (re.compile(r"\bbytea\b", re.I), "TEXT"),  # part hashes as hex text
    (re.compile(r"\bdate NOT NULL\b", re.I), "TEXT NOT NULL"),
)


def schema_for(table: str, *, path: Path = SCHEMA_SQL) -> str:
    """schema.sql with `llm_requests` (table, partition, index and view names) renamed to `table`."""
    # No trailing \b: index names (llm_requests_ts_idx) are renamed too.
    return re.sub(rf"\b{DEFAULT_TABLE}", table, path.read_text())


def sqlite_schema(table: str, *, path: Path = SCHEMA_SQL) -> str:
    ddl = schema_for(table, path=path)
    for pattern, replacement in _SQLITE_TYPES:
        ddl = pattern.sub(replacement, ddl)
    return ddl


def bodies_table(table: str) -> str:
    """Where the parts of `table`'s bodies are kept (schema.sql's llm_requests_bodies)."""
    return f"{table}_bodies"


def full_view(table: str) -> str:
    """The view that reads `table` with its bodies rebuilt (schema.sql's llm_requests_full)."""
    return f"{table}_full"
