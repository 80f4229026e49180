"""`llm-proxy db init` and `llm-proxy db replay`: the database side, by hand."""

from __future__ import annotations

import argparse
import sys
import time

from ..paths import default_db_url
from ..storage.dsn import Database, check_table_name, parse_db_url
from ..storage.journal import Journal, JournalLocked, journal_dir
from ..storage.postgres import PostgresSink
from ..storage.schema import DEFAULT_TABLE
from ..storage.sqlite import SqliteSink
from ..storage.writer import Writer

Sink = PostgresSink | SqliteSink


def add_database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help="database (default: $DATABASE_URL, else the embedded SQLite file)")
    parser.add_argument("--table", default=DEFAULT_TABLE, help=f"table name (default {DEFAULT_TABLE})")


def database(args: argparse.Namespace) -> tuple[Database, str]:
    return parse_db_url(args.db or default_db_url()), check_table_name(args.table)


def make_sink(db: Database, table: str) -> Sink:
    return PostgresSink(db.target, table) if db.kind == "postgresql" else SqliteSink(db.target, table)


def init(args: argparse.Namespace) -> int:
    db, table = database(args)
    sink = make_sink(db, table)
    try:
        sink.connect()  # applies schema.sql
    except Exception as e:
        print(f"llm-proxy: cannot reach {db.describe()}: {e}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    print(f"schema.sql applied: {db.describe()}, table {table}")
    return 0


def replay(args: argparse.Namespace) -> int:
    db, table = database(args)
    journal = Journal(journal_dir(args.journal or "", table), max_bytes=1 << 62)
    if not journal.directory.is_dir() or not journal.pending:
        print(f"nothing to replay in {journal.directory}")
        return 0
    try:
        journal.open()  # refuses while a running proxy owns the journal (it replays it itself)
    except JournalLocked as e:
        print(f"llm-proxy: {e}; that proxy replays it itself once its database is up", file=sys.stderr)
        return 1
    journal.close()
    before = journal.size_bytes
    writer = Writer(make_sink(db, table), f"{db.describe()} table {table}", journal=journal)
    writer.start()
    while journal.pending and writer.stats.database != "down":
        time.sleep(0.1)
    writer.stop()
    if journal.pending:
        print(f"llm-proxy: replay stopped: {writer.stats.last_error}", file=sys.stderr)
        return 1
    print(f"replayed {before} bytes of journal into {db.describe()}, table {table}: "
          f"{writer.stats.rows_written} rows written, {writer.stats.dead_letters} set aside as dead letters")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="database: apply the schema, replay a journal")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("init", help="apply schema.sql (idempotent)")
    add_database_flags(p)
    p.set_defaults(handler=init)
    p = actions.add_parser("replay", help="load a journal into the database by hand")
    add_database_flags(p)
    p.add_argument("--journal", metavar="DIR", help="journal directory (default: $LLM_PROXY_HOME/journal/<table>)")
    p.set_defaults(handler=replay)
