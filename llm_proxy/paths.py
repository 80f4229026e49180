"""Where llm-proxy finds its files and keeps its state.

The repo root holds the shipped providers.toml, pricing.toml and schema.sql, so
the defaults work from any working directory. Runtime state (the embedded
SQLite database) goes to a per-user directory, never into the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROVIDERS = REPO_ROOT / "providers.toml"
DEFAULT_PRICING = REPO_ROOT / "pricing.toml"
SCHEMA_SQL = REPO_ROOT / "schema.sql"


def state_dir() -> Path:
    """`$LLM_PROXY_HOME`, else `~/.llm-proxy`: the embedded database lives here."""
    return Path(os.environ.get("LLM_PROXY_HOME") or Path.home() / ".llm-proxy")


def default_db_url() -> str:
    """`$DATABASE_URL` if set, else an SQLite file in the state directory."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{state_dir() / 'llm-proxy.db'}"
