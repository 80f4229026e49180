"""schema.sql is the only DDL; this module adapts it to a table name and to SQLite."""

from __future__ import annotations

import re
from pathlib import Path

from ..paths import SCHEMA_SQL

DEFAULT_TABLE = "llm_requests"

# SQLite keeps numeric and timestamps as text so that Decimal costs stay exact.
_SQLITE_TYPES = (
    (re.compile(r"\bbigserial\s+PRIMARY\s+KEY\b", re.I), "INTEGER PRIMARY KEY"),
    (re.compile(r"\btimestamptz\b", re.I), "TEXT"),
    (re.compile(r"\bjsonb\b", re.I), "TEXT"),
    (re.compile(r"\bnumeric\b", re.I), "TEXT"),
)


def schema_for(table: str, *, path: Path = SCHEMA_SQL) -> str:
    """schema.sql with `llm_requests` (table and index names) renamed to `table`."""
    # No trailing \b: index names (llm_requests_ts_idx) are renamed too.
    return re.sub(rf"\b{DEFAULT_TABLE}", table, path.read_text())


def sqlite_schema(table: str, *, path: Path = SCHEMA_SQL) -> str:
    ddl = schema_for(table, path=path)
    for pattern, replacement in _SQLITE_TYPES:
        ddl = pattern.sub(replacement, ddl)
    return ddl
