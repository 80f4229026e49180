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


def cost(price: Price, usage: Usage) -> Decimal | None:
    """USD cost of one call; None when the usage is unknown or not fully priced."""
    if not usage.known:
        return None
    input_tokens = usage.input_tokens or 0
    if price.above is not None and price.above_tokens is not None and input_tokens > price.above_tokens:
        price = price.above
    cached = usage.cached_tokens or 0
    writes = usage.cache_write_tokens or 0
    writes_1h = usage.cache_write_1h_tokens or 0
    try:
        per_million = (
            _rate(price, "input", input_tokens - cached - writes)
            + _rate(price, "cached_input", cached)
            + _rate(price, "cache_write", writes - writes_1h)
            + _rate(price, "cache_write_1h", writes_1h)
            + _rate(price, "output", usage.output_tokens)
        )
        fees = _rate(price, "web_search", usage.web_search_requests)
    except Unpriced:
        return None
    return per_million / MILLION + fees


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


class PriceBook:
    """All prices of one pricing.toml; `find` is the longest-prefix lookup."""

    def __init__(self, tables: Mapping[str, Mapping[str, Price]]) -> None:
        # Longest keys first, so the first prefix that matches is the longest.
        self._tables = {
            provider: sorted(entries.items(), key=lambda item: len(item[0]), reverse=True)
            for provider, entries in tables.items()
        }
        self._longest_prefix: Memo[tuple[str, str], Price | None] = Memo(self._lookup)

    def find(self, provider: str, model: str | None) -> Price | None:
        if not model:
            return None
        return self._longest_prefix((provider, model))

    def _lookup(self, key: tuple[str, str]) -> Price | None:
        provider, model = key
        return self._match(provider, model) or self._match(ANY_PROVIDER, model)

    def _match(self, provider: str, model: str) -> Price | None:
        for prefix, price in self._tables.get(provider, ()):
            if model.startswith(prefix):
                return price
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
