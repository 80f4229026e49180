"""The `llm_db` option: a PostgreSQL URL or an SQLAlchemy-style SQLite URL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")
_URL_PASSWORD = re.compile(r"://([^:@/\s]*):[^@/\s]*@")
_PARAM_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s'\"]*)")


def mask_password(text: str) -> str:
    """`text` with the password of any connection string in it masked: `user:***@` in a URL,
    `password=***` as a query parameter or a keyword/value pair."""
    return _PARAM_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"://\1:***@", text))


class DatabaseURLError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Database:
    kind: str  # "postgresql" | "sqlite"
    target: str  # the libpq URL, or the SQLite file path

    def describe(self) -> str:
        """For logs: the database without its password."""
        if self.kind == "sqlite":
            return f"sqlite file {self.target}"
        return "postgresql " + mask_password(self.target)


def parse_db_url(url: str) -> Database:
    """`postgresql://...` / `postgres://...`, `sqlite:///relative.db` or `sqlite:////absolute.db`."""
    if url.startswith(("postgresql://", "postgres://")):
        return Database("postgresql", url)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path.endswith("/"):
            raise DatabaseURLError(f"llm_db {url!r} names no file; e.g. sqlite:///llm-proxy.db")
        return Database("sqlite", str(Path(path)))
    raise DatabaseURLError(
        f"llm_db {url!r} is not a database URL; use postgresql://user@host:5432/db, "
        "sqlite:///relative/path.db or sqlite:////absolute/path.db"
    )


def check_table_name(name: str) -> str:
    if not _TABLE.match(name):
        raise DatabaseURLError(
            f"llm_table {name!r} must be a plain SQL identifier (letters, digits, _; at most 51 characters)"
        )
    return name
