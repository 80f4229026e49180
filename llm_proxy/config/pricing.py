"""pricing.toml: USD per 1M tokens, and the one cost formula for every provider.

Prices are read as Decimal (tomllib's parse_float) so that no float ever
touches money. Because the usage semantics are normalised (input includes
cache reads and writes, output includes reasoning), one formula prices every
provider without double counting:

    cost = ((input - cached - cache_write) * input_rate
            + cached * cached_input
            + (cache_write - cache_write_1h) * cache_write
            + cache_write_1h * cache_write_1h_rate
            + output * output_rate) / 1e6
           + web_search_requests * web_search

A token class that occurs but has no price makes the cost unknown (NULL),
never a guess.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from ..usage.model import Usage
from .errors import ConfigError
from .memo import Memo

MILLION = Decimal(1_000_000)
ANY_PROVIDER = "*"
_RATES = ("input", "output", "cached_input", "cache_write", "cache_write_1h", "web_search")
_TIER_FIELDS = ("above_tokens", "above")


@dataclass(frozen=True, slots=True)
class Price:
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    web_search: Decimal | None = None  # USD per request, not per token
    above_tokens: int | None = None  # long-context tier: prompts above this use `above`
    above: Price | None = None


class Unpriced(Exception):
    """The usage has a token class this price does not cover."""


def _rate(price: Price, name: str, tokens: int | None) -> Decimal:
    if not tokens:
        return Decimal(0)
    rate = getattr(price, name)
    if rate is None:
        raise Unpriced(f"{tokens} {name} tokens but no {name} price")
    return rate * tokens


# What usage/model.py may set on a Usage whose provider sent a value that is not
# a count (so a None there means "garbage", not "not reported"): a bool, or the
# names of the fields concerned. Read with getattr so either form works.
INVALID_ATTR = "invalid"
# Counts the formula reads; an invalid one of these makes the cost unknown. Reasoning is
# not among them: it is part of output, which is billed whole (a price database rate for
# reasoning alone checks it where it is used).
PRICED_FIELDS = frozenset({"input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
                           "cache_write_1h_tokens", "web_search_requests"})


def invalid_fields(usage: Usage) -> frozenset[str]:
    """The fields usage/model.py marked as sent-but-not-a-count (all of them for a bare True)."""
    invalid = getattr(usage, INVALID_ATTR, None)
    if not invalid:
        return frozenset()
    if invalid is True:
        return PRICED_FIELDS | {"reasoning_tokens"}
    return frozenset(invalid)


def unknown_count(usage: Usage) -> str | None:
    """Why `usage` cannot be priced at all, or None when it can.

    A cost is built on the input and output counts, so both must be known. A
    cache count that is None because the provider's format never reports it
    is 0; one that is None because the provider sent garbage there is unknown,
    and so is any cost built on it (usage/model.py marks those).
    """
    if usage.input_tokens is None or usage.output_tokens is None:
        return "input or output count unknown"
    if min(usage.input_tokens, usage.output_tokens, usage.cached_tokens or 0, usage.cache_write_tokens or 0,
           usage.cache_write_1h_tokens or 0, usage.web_search_requests or 0) < 0:
        return "a negative count"  # only in rows stored before counts were checked
    if PRICED_FIELDS & invalid_fields(usage):
        return "a count the provider sent is not a count"
    return None


def cost(price: Price, usage: Usage) -> Decimal | None:
    """USD cost of one call; None when the usage is unknown or not fully priced, never negative."""
    if unknown_count(usage) is not None:
        return None
    input_tokens = usage.input_tokens or 0
    if price.above is not None and price.above_tokens is not None and input_tokens > price.above_tokens:
        price = price.above
    cached = usage.cached_tokens or 0
    writes = usage.cache_write_tokens or 0
    writes_1h = usage.cache_write_1h_tokens or 0
    parts = (input_tokens - cached - writes, cached, writes - writes_1h, writes_1h, usage.output_tokens or 0)
    if min(parts) < 0:
        return None  # parts larger than their whole (a stored row from before counts were checked)
    try:
        per_million = (
            _rate(price, "input", parts[0])
            + _rate(price, "cached_input", parts[1])
            + _rate(price, "cache_write", parts[2])
            + _rate(price, "cache_write_1h", parts[3])
            + _rate(price, "output", parts[4])
        )
        fees = _rate(price, "web_search", usage.web_search_requests)
    except Unpriced:
        return None
    total = per_million / MILLION + fees
    return total if total >= 0 else None


def missing_rate(price: Price, usage: Usage) -> str | None:
    """Why `cost` gave None for a priced model (for the once-per-model warning)."""
    try:
        _rate(price, "cached_input", usage.cached_tokens)
        _rate(price, "cache_write", (usage.cache_write_tokens or 0) - (usage.cache_write_1h_tokens or 0))
        _rate(price, "cache_write_1h", usage.cache_write_1h_tokens)
        _rate(price, "web_search", usage.web_search_requests)
    except Unpriced as e:
        return str(e)
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """The pricing.toml entry that prices a model: its table, its key, and whether the key is the whole name."""

    table: str  # the provider's name, or "*"
    key: str
    price: Price
    exact: bool


class PriceBook:
    """All prices of one pricing.toml; `match` is the longest-prefix lookup."""

    def __init__(self, tables: Mapping[str, Mapping[str, Price]]) -> None:
        # Longest keys first, so the first prefix that matches is the longest.
        self._tables = {
            provider: sorted(entries.items(), key=lambda item: len(item[0]), reverse=True)
            for provider, entries in tables.items()
        }
        self._longest_prefix: Memo[tuple[str, str], Entry | None] = Memo(self._lookup)

    def match(self, provider: str, model: str | None) -> Entry | None:
        if not model:
            return None
        return self._longest_prefix((provider, model))

    def find(self, provider: str, model: str | None) -> Price | None:
        entry = self.match(provider, model)
        return None if entry is None else entry.price

    def entries(self) -> list[Entry]:
        """Every entry, table by table (for `llm-proxy prices check`)."""
        return [Entry(table, key, price, True) for table, items in self._tables.items() for key, price in items]

    def _lookup(self, key: tuple[str, str]) -> Entry | None:
        provider, model = key
        return self._match(provider, model) or self._match(ANY_PROVIDER, model)

    def _match(self, provider: str, model: str) -> Entry | None:
        for prefix, price in self._tables.get(provider, ()):
            if model.startswith(prefix):
                return Entry(provider, prefix, price, prefix == model)
        return None

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._tables.values())


def _decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ConfigError(f"{where} must be a number (USD), not {value!r}")
    if not Decimal(value).is_finite():
        raise ConfigError(f"{where} must be a finite number, not {value}")
    if value < 0:
        raise ConfigError(f"{where} cannot be negative")
    return Decimal(value)


def parse_price(entry: object, where: str, *, tier: bool = False) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an inline table like {{ input = 0.15, output = 0.60 }}")
    allowed = set(_RATES) if tier else set(_RATES) | set(_TIER_FIELDS)
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(allowed)}")
    for required in ("input", "output"):
        if required not in entry:
            raise ConfigError(f"{where}: {required} is required")
    rates = {name: _decimal(entry[name], f"{where}.{name}") for name in _RATES if name in entry}
    price = Price(**rates)
    if "above" in entry or "above_tokens" in entry:
        threshold = entry.get("above_tokens")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold <= 0:
            raise ConfigError(f"{where}: above_tokens must be a positive integer when above is given")
        tier_rates = entry.get("above", {})
        if not isinstance(tier_rates, dict):
            raise ConfigError(f"{where}.above must be an inline table of rates, e.g. {{ input = 2.5, output = 15 }}")
        base = {name: getattr(price, name) for name in _RATES if getattr(price, name) is not None}
        above = parse_price({**base, **tier_rates}, f"{where}.above", tier=True)
        price = replace(price, above_tokens=threshold, above=above)
    return price


def load_pricing(path: Path) -> PriceBook:
    """Read and validate a pricing file; raises ConfigError with the reason."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except OSError as e:
        raise ConfigError(f"cannot read pricing file {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"pricing file {path} is not valid TOML: {e}") from e
    tables: dict[str, dict[str, Price]] = {}
    for provider, entries in data.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: [{provider}] must be a table of models")
        tables[provider] = {
            model: parse_price(entry, f"{path}: [{provider}] \"{model}\"") for model, entry in entries.items()
        }
    return PriceBook(tables)
