"""`llm-proxy db init`, `replay`, `reprice`, `prune` and `migrate`: the database side, by hand."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from ..paths import DEFAULT_PRICING, default_db_url
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


def reprice(args: argparse.Namespace) -> int:
    """Recompute cost_usd of stored rows from their stored usage, at today's prices and each row's own time."""
    from ..config.pricing import load_pricing
    from ..pricer import bundled_database
    from ..prices.rows import RowStore, Unrepriceable, parse_since
    from ..prices.rows import reprice as reprice_row
    from ..prices.sources import Prices

    prices = Prices(load_pricing(Path(args.pricing)), bundled_database())
    since = parse_since(args.since)
    db, table = database(args)
    store = RowStore(db, table)
    rows = repriced = changed = 0
    left: Counter[str] = Counter()
    before = after = Decimal(0)
    null_before = null_after = 0
    try:
        for batch in store.batches(since, args.model):
            changes = []
            for row in batch:
                rows += 1
                try:
                    cost = reprice_row(prices, row)
                except Unrepriceable as e:
                    left[str(e)] += 1
                    continue
                repriced += 1
                before += row.cost_usd or 0
                after += cost or 0
                null_before += row.cost_usd is None
                null_after += cost is None
                if cost != row.cost_usd:
                    changes.append((row.id, cost))
            changed += len(changes)
            if changes and not args.dry_run:
                store.set_costs(changes)
    finally:
        store.close()
    which = f" of model {args.model}" if args.model else ""
    print(f"{db.describe()}, table {table}, rows{which} since {since.isoformat(timespec='seconds')}: {rows}")
    kept = "; ".join(f"{reason}: {n}" for reason, n in sorted(left.items()))
    print(f"  priced again: {repriced}, cost changed: {changed}" + (f"; left as they were ({kept})" if kept else ""))
    print(f"  total cost_usd of the rows priced again: before {before} USD, after {after} USD "
          f"(change {after - before:+} USD); unpriced (NULL) before {null_before}, after {null_after}")
    print("  dry run: nothing written" if args.dry_run else
          f"  {changed} rows updated; budgets' spend is read from the rows, so it follows")
    return 0


def prune(args: argparse.Namespace) -> int:
    """Delete rows older than a span (whole monthly partitions where possible), or only their bodies."""
    from ..prices.rows import parse_since
    from ..storage.retention import Retention

    try:
        cutoff = parse_since(args.older_than)
    except ValueError as e:
        print(f"llm-proxy: --older-than {str(e).removeprefix('--since ')}", file=sys.stderr)
        return 2
    db, table = database(args)
    try:
        with Retention(db, table) as retention:
            done = retention.drop_bodies(cutoff) if args.bodies_only else retention.prune(cutoff)
    except Exception as e:
        print(f"llm-proxy: cannot prune {db.describe()} table {table}: {e}", file=sys.stderr)
        return 1
    when = cutoff.isoformat(timespec="seconds")
    if args.bodies_only:
        print(f"{db.describe()}, table {table}: bodies of {done.bodies} rows older than {when} dropped; "
              f"{done.parts} unused body parts freed")
    else:
        dropped = f" ({len(done.partitions)} monthly partitions dropped: {', '.join(done.partitions)})" \
            if done.partitions else ""
        print(f"{db.describe()}, table {table}: {done.rows} rows older than {when} deleted{dropped}; "
              f"{done.parts} unused body parts freed")
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Convert a table made by an older version (not partitioned) to monthly partitions."""
    db, table = database(args)
    if db.kind != "postgresql":
        print("nothing to migrate: the embedded SQLite database has no partitions")
        return 0
    import psycopg

    from ..control.reports import ensure_rollup
    from ..storage.migrate import migrate as convert

    try:
        with psycopg.connect(db.target, connect_timeout=10, application_name="llm-proxy cli") as conn:
            moved = convert(conn, table)
            if moved is not None and conn.execute("SELECT to_regclass(%s)", (f"{table}_hourly",)).fetchone()[0]:
                ensure_rollup(conn, table)  # its triggers went with the old table
    except Exception as e:
        print(f"llm-proxy: cannot migrate {db.describe()} table {table}: {e}", file=sys.stderr)
        return 1
    if moved is None:
        print(f"{db.describe()}, table {table}: already partitioned by month, nothing to do")
    else:
        print(f"{db.describe()}, table {table}: now partitioned by month; {moved} rows moved")
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
    p = actions.add_parser("reprice", help="recompute cost_usd of stored rows from their usage after a price fix")
    p.add_argument("--since", required=True, help="rows since a span (30d, 12h, 2w) or a date like 2026-11-01")
    p.add_argument("--model", help="only rows of this model (as asked or as answered)")
    p.add_argument("--dry-run", action="store_true", help="report the before/after totals, write nothing")
    p.add_argument("--pricing", default=str(DEFAULT_PRICING), metavar="PATH",
                   help="pricing file, as the proxy's llm_pricing (default: the shipped pricing.toml)")
    add_database_flags(p)
    p.set_defaults(handler=reprice)
    p = actions.add_parser("prune", help="delete rows older than a span (old monthly partitions dropped whole)")
    p.add_argument("--older-than", required=True, metavar="SPAN",
                   help="rows older than a span (90d, 12w, 24h) or than a date like 2026-08-01")
    p.add_argument("--bodies-only", action="store_true",
                   help="keep the rows, drop only their request and response bodies")
    add_database_flags(p)
    p.set_defaults(handler=prune)
    p = actions.add_parser("migrate", help="convert a table of an older version to monthly partitions")
    add_database_flags(p)
    p.set_defaults(handler=migrate)
