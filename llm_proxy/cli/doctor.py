"""`llm-proxy doctor`: check the config files, the database and the journal, in plain words."""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path

import psycopg

from ..config.errors import ConfigError
from ..config.pricing import load_pricing
from ..config.providers import load_providers
from ..keys.dbstore import DB, open_store
from ..keys.store import read_keyring
from ..paths import DEFAULT_PRICING, DEFAULT_PROVIDERS
from ..record import COLUMNS
from ..storage.dsn import DatabaseURLError
from ..storage.journal import Journal, JournalLocked, journal_dir
from ..storage.postgres import PostgresSink
from .db import add_database_flags, database, make_sink


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, text: str) -> None:
        print(f"ok       {text}")

    def note(self, text: str) -> None:
        print(f"note     {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        print(f"PROBLEM  {text}")


def check_files(args: argparse.Namespace, report: Report) -> None:
    try:
        providers = load_providers(Path(args.providers))
        report.ok(f"{args.providers}: {len(providers.by_name)} providers")
        unset = sorted(p.api_key_env for p in providers.by_name.values()
                       if p.api_key_env and not os.environ.get(p.api_key_env))
        if unset:
            report.note(f"not set here (needed only with virtual keys or cross-provider fallbacks): {', '.join(unset)}")
    except ConfigError as e:
        report.problem(str(e))
    try:
        report.ok(f"{args.pricing}: {len(load_pricing(Path(args.pricing)))} model prices")
    except ConfigError as e:
        report.problem(str(e))
    keys_path = args.keys_file or os.environ.get("LLM_PROXY_KEYS")
    if keys_path == DB:
        try:
            store = open_store(DB, os.environ.get("DATABASE_URL", ""))
            assert store is not None
            report.ok(f"{store.describe()}: {len(store.read())} virtual keys")
        except (ConfigError, psycopg.Error, OSError) as e:
            report.problem(f"keys in the database: {e}".strip())
    elif keys_path:
        try:
            ring = read_keyring(Path(keys_path))
            report.ok(f"{keys_path}: {len(ring)} virtual keys" + ("" if Path(keys_path).exists() else " (no file)"))
        except ConfigError as e:
            report.problem(str(e))


def check_database(args: argparse.Namespace, report: Report) -> None:
    try:
        db, table = database(args)
    except DatabaseURLError as e:
        report.problem(str(e))
        return
    sink = make_sink(db, table)
    try:
        sink.connect()
        columns = _columns(sink, db.kind, table)
        unpartitioned = isinstance(sink, PostgresSink) and not sink.partitioned
    except (psycopg.Error, sqlite3.Error, OSError) as e:
        report.problem(f"cannot use {db.describe()}: {e}".strip())
        return
    finally:
        sink.close()
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        report.problem(f"table {table} lacks columns {missing}: it predates schema.sql; migrate or pick another llm_table")
    else:
        report.ok(f"{db.describe()}: table {table} reachable, schema complete")
        if unpartitioned:
            report.note(f"table {table} is not partitioned by month (made by an older version): it works, but "
                        "prune deletes row by row; `llm-proxy db migrate` converts it")


def _columns(sink: object, kind: str, table: str) -> set[str]:
    conn = sink._conn  # type: ignore[attr-defined]
    if kind == "sqlite":
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    return {row[0] for row in rows}


def check_journal(args: argparse.Namespace, report: Report) -> None:
    journal = Journal(journal_dir(args.journal or "", args.table), max_bytes=1 << 62)
    if not journal.directory.is_dir():
        report.ok(f"journal {journal.directory}: none yet")
        return
    try:
        journal.open()
        journal.close()
        owner = "no proxy running on it"
    except JournalLocked:
        owner = "a running proxy owns it"
    size, dead = journal.size_bytes, journal.dead_letters()
    if size:
        report.problem(f"journal {journal.directory} holds {size} bytes of rows not yet in the database "
                       f"({owner}); they are replayed when the database is back, or run `llm-proxy db replay`")
    else:
        report.ok(f"journal {journal.directory}: empty ({owner})")
    if dead:
        report.problem(f"{dead} rows the database refused are set aside in {journal.directory / 'dead-letter.jsonl'}"
                       " (each line gives the reason)")


def doctor(args: argparse.Namespace) -> int:
    report = Report()
    check_files(args, report)
    check_database(args, report)
    check_journal(args, report)
    print("all good" if not report.problems else f"{report.problems} problem(s) found")
    return 1 if report.problems else 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("doctor", help="check config files, database and journal")
    add_database_flags(p)
    p.add_argument("--providers", default=str(DEFAULT_PROVIDERS), help="providers file")
    p.add_argument("--pricing", default=str(DEFAULT_PRICING), help="pricing file")
    p.add_argument("--keys-file", metavar="PATH", help="keys file (default: $LLM_PROXY_KEYS)")
    p.add_argument("--journal", metavar="DIR", help="journal directory (default: $LLM_PROXY_HOME/journal/<table>)")
    p.set_defaults(handler=doctor)
