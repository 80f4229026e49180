"""`llm-proxy prices show MODEL` and `llm-proxy prices check`: how calls are priced, and what is not."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from ..config.pricing import load_pricing
from ..config.providers import load_providers
from ..paths import DEFAULT_PRICING, DEFAULT_PROVIDERS
from ..pricer import bundled_database
from ..prices.report import check as check_prices
from ..prices.report import show as show_quote
from ..prices.rows import RowStore, parse_since
from ..prices.sources import Prices
from .db import add_database_flags, database


def load_prices(args: argparse.Namespace) -> Prices:
    """pricing.toml (--pricing) over genai-prices' bundled snapshot, as the proxy prices calls."""
    return Prices(load_pricing(Path(args.pricing)), bundled_database())


def add_pricing_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pricing", default=str(DEFAULT_PRICING), metavar="PATH",
                        help="pricing file, as the proxy's llm_pricing (default: the shipped pricing.toml)")


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--at {text!r}: use an ISO date or datetime, e.g. 2026-11-01T09:30") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def show(args: argparse.Namespace) -> int:
    prices = load_prices(args)
    if args.provider:
        providers = [args.provider]
    else:
        names = list(load_providers(Path(args.providers)).by_name)
        providers = list(dict.fromkeys([*names, *(e.table for e in prices.book.entries() if e.table != "*")]))
    at = _at(args.at)
    quotes = [q for q in (prices.quote(provider, args.model) for provider in providers) if q is not None]
    if not args.provider and any(not q.catch_all for q in quotes):
        quotes = [q for q in quotes if not q.catch_all]  # Ollama's "" prices any name: not news here
    for i, quote in enumerate(quotes):
        print(("\n" if i else "") + "\n".join(show_quote(prices, quote, at, args.tier)))
    shown = len(quotes)
    if not shown:
        where = f"provider {args.provider}" if args.provider else "any provider of providers.toml"
        print(f"llm-proxy: {args.model!r} has no price for {where} in {args.pricing} or genai-prices "
              f"{bundled_database().version}: its calls cost NULL", file=sys.stderr)
        return 1
    return 0


def check(args: argparse.Namespace) -> int:
    prices = load_prices(args)
    since = parse_since(args.since)
    db, table = database(args)
    store = RowStore(db, table)
    try:
        seen = store.models_seen(since)
    finally:
        store.close()
    report = check_prices(prices, seen, datetime.now(UTC))
    print(f"rows of {db.describe()}, table {table}, since {since.isoformat(timespec='seconds')}: "
          f"{sum(n for *_, n in seen)} with usage, {len(seen)} models")
    print("\n".join(report.lines()))
    return 1 if report.failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    prices = commands.add_parser("prices", help="how calls are priced: show a model, check the rows")
    actions = prices.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("show", help="explain how a model is priced (source, match, rates)")
    p.add_argument("model", metavar="MODEL", help="model name as clients send it or providers answer it")
    p.add_argument("--provider", help="provider name (default: every provider that prices MODEL)")
    p.add_argument("--at", metavar="TIME", help="rates at this ISO time (default: now)")
    p.add_argument("--tier", help="service tier as a response reports it: flex, priority, batch, ...")
    p.add_argument("--providers", default=str(DEFAULT_PROVIDERS), help="providers file")
    add_pricing_flag(p)
    p.set_defaults(handler=show)
    p = actions.add_parser(
        "check", help="models seen with no price or priced from a prefix, and pricing.toml entries that "
                      "differ from genai-prices; exit 1 if any")
    p.add_argument("--since", default="30d", help="rows since a span (30d, 12h, 2w) or a date (default 30d)")
    add_database_flags(p)
    add_pricing_flag(p)
    p.set_defaults(handler=check)
