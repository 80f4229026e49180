"""What `llm-proxy prices show` and `prices check` say: how a model is priced, and what is not priced right.

Kept apart from the command line so that the wording is tested as plain
functions over a Prices object and rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..config.pricing import Entry, Price
from .database import Rates, TierUnpriced
from .sources import DATABASE, Prices, Quote

# pricing.toml field -> genai-prices price key (both USD per 1M tokens)
_SAME_RATE = (("input", "input_mtok"), ("output", "output_mtok"), ("cached_input", "cache_read_mtok"),
              ("cache_write", "cache_write_mtok"), ("cache_write_1h", "cache_write_1h_mtok"))


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def describe_rule(clause: Any) -> str:
    """genai-prices' match rule in words: `equals 'gpt-5.6-luna' or regex '^gpt-5\\.6-luna-...'`."""
    for joiner, attr in ((" or ", "or_"), (" and ", "and_")):
        parts = getattr(clause, attr, None)
        if parts is not None:
            inner = joiner.join(describe_rule(p) for p in parts)
            return inner if len(parts) < 2 or joiner == " or " else f"({inner})"
    for attr in ("equals", "starts_with", "ends_with", "contains", "regex"):
        value = getattr(clause, attr, None)
        if value is not None:
            return f"{attr.replace('_', ' ')} '{value}'"
    return repr(clause)


def describe_rates(rates: Rates) -> list[str]:
    lines = []
    for key, value in rates.per_million().items():
        unit = "per 1000" if key.endswith("_kcount") else "per 1M tokens"
        shown = _plain(value) if isinstance(value, Decimal) else value
        lines.append(f"{key.removesuffix('_mtok').removesuffix('_kcount')}: {shown} USD {unit}")
    if rates.uncounted:
        lines.append(f"(also priced, not metered by llm-proxy: {', '.join(rates.uncounted)})")
    return lines


def describe_price(price: Price) -> list[str]:
    lines = []
    for name in ("input", "cached_input", "cache_write", "cache_write_1h", "output"):
        value = getattr(price, name)
        if value is not None:
            lines.append(f"{name}: {_plain(value)} USD per 1M tokens")
    if price.web_search is not None:
        lines.append(f"web_search: {_plain(price.web_search)} USD per search")
    if price.above is not None:
        above = ", ".join(f"{n} {_plain(getattr(price.above, n))}" for n in ("input", "cached_input", "cache_write",
                                                                             "cache_write_1h", "output")
                          if getattr(price.above, n) is not None)
        lines.append(f"above {price.above_tokens} prompt tokens, the whole request: {above}")
    return lines


def show(prices: Prices, quote: Quote, at: datetime, tier: str | None) -> list[str]:
    """How `quote` prices a call at `at` with `tier`: source, match, rates."""
    lines = [f"{quote.provider} {quote.model}", f"  priced by: {quote.describe()}"]
    if quote.passed_over is not None:
        lines.append(f'  (pricing.toml\'s prefix "{quote.passed_over.key}" is not used: the database knows '
                     f"this model under its own name)")
    if quote.source == DATABASE:
        assert quote.db is not None and prices.database is not None
        lines.append(f"  database: genai-prices {prices.database.version}; the model matches names by "
                     f"{describe_rule(quote.db.model.match)} (case-insensitive)")
        try:
            rates = prices.rates(quote, at, tier)
        except TierUnpriced as e:
            return [*lines, f"  {e}: such calls cost NULL"]
        lines.append(f"  rates at {at.isoformat()}{f' for tier {tier}' if tier else ''}:")
        lines += [f"    {line}" for line in describe_rates(rates)]
        variants = sorted({v for variant in quote.db.model.price_variants or () for v in variant.when.values()})
        if variants:
            lines.append(f"  tiers it prices (--tier): {', '.join(variants)}")
        history = quote.db.model.prices
        if isinstance(history, list) and len(history) > 1:
            lines.append(f"  price changes by time: {len(history)} periods (dates, times of day); "
                         "a call is priced at its own time")
    else:
        assert quote.entry is not None
        lines.append("  rates (every tier alike):")
        lines += [f"    {line}" for line in describe_price(quote.entry.price)]
    return lines


@dataclass
class CheckReport:
    unpriced: list[str] = field(default_factory=list)
    prefixed: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    redundant: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.unpriced or self.prefixed or self.differing)

    def lines(self) -> list[str]:
        out = []
        for title, items in (("models seen with no price (cost NULL)", self.unpriced),
                             ("models seen priced from a pricing.toml prefix (a sibling's price?)", self.prefixed),
                             ("pricing.toml entries that differ from genai-prices", self.differing),
                             ("pricing.toml entries equal to genai-prices (can be removed)", self.redundant)):
            if items:
                out.append(f"{title}:")
                out += [f"  {item}" for item in items]
        if not self.failed:
            out.append("prices check: every model seen is priced by an exact entry or the database; "
                       "pricing.toml agrees with genai-prices")
        return out


def check(prices: Prices, seen: Iterable[tuple[str, str | None, str | None, int]], now: datetime) -> CheckReport:
    """`seen`: (provider, model, response_model, rows) of stored rows with usage."""
    report = CheckReport()
    for provider, model, response_model, rows in seen:
        name = f"{provider}/{response_model or model}" + (f" (asked {model})" if response_model and model and
                                                          response_model != model else "")
        quote = prices.quote_call(provider, response_model, model)
        if quote is None:
            report.unpriced.append(f"{name}: {rows} rows")
        elif quote.from_prefix:
            assert quote.entry is not None
            report.prefixed.append(f'{name}: {rows} rows, by "{quote.entry.key}" in [{quote.entry.table}]')
    for entry in prices.book.entries():
        difference = _difference(prices, entry, now)
        if difference is None:
            continue
        where = f'[{entry.table}] "{entry.key}"'
        if difference:
            report.differing.append(f"{where}: {difference}")
        else:
            report.redundant.append(where)
    return report


def _difference(prices: Prices, entry: Entry, now: datetime) -> str | None:
    """None: the database lacks the model; "": same rates; else what differs."""
    if prices.database is None or entry.table == "*" or entry.key == "":
        return None
    known = prices.database.find(entry.table, entry.key)
    if known is None:
        return None
    try:
        rates = prices.database.rates(known, now, None).rates
    except TierUnpriced:
        return None
    diffs = []
    price = entry.price
    for ours, theirs in _SAME_RATE:
        mine = getattr(price, ours)
        db = rates.get(theirs)
        base = db if db is None or isinstance(db, Decimal) else db.base
        if theirs == "output_mtok" and base is None:
            base = Decimal(0)  # embeddings: no output rate in the database
        if mine != base:
            diffs.append(f"{ours} {_shown(mine)} here, {_shown(base)} in genai-prices")
    search = rates.get("web_searches_kcount")
    search_each = None if search is None or not isinstance(search, Decimal) else search / 1000
    if price.web_search != search_each:
        diffs.append(f"web_search {_shown(price.web_search)} here, {_shown(search_each)} in genai-prices")
    db_tiers = sorted({t.start for r in rates.values() if not isinstance(r, Decimal) for t in r.tiers})
    my_tiers = [price.above_tokens] if price.above_tokens is not None else []
    if db_tiers != my_tiers:
        diffs.append(f"long-context tiers {my_tiers or 'none'} here, {db_tiers or 'none'} in genai-prices")
    elif price.above is not None:
        for ours, theirs in _SAME_RATE:
            db = rates.get(theirs)
            tier_rate = db.tiers[0].price if db is not None and not isinstance(db, Decimal) else db
            if getattr(price.above, ours) != tier_rate:
                diffs.append(f"above {price.above_tokens}: {ours} {_shown(getattr(price.above, ours))} here, "
                             f"{_shown(tier_rate)} in genai-prices")
    return "; ".join(diffs)


def _shown(value: Decimal | None) -> str:
    return "unpriced" if value is None else _plain(value)

