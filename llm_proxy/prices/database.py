"""genai-prices as a price source, at the call's own time and service tier, fast enough for the hot path.

genai-prices (pydantic's price database) ships its data as a snapshot inside
the package: prices in Decimal, per-model match rules, price history by date
and time of day, and variants for service tiers and batch. Nothing here reads
the network: the bundled snapshot (or one set by the operator beforehand) is
used, and genai-prices' auto-update is never started.

Its own `calc_price` re-validates the price table and the usage on every call
(about 200 µs), too slow for a response hook. So the match (provider, model)
-> model and the rates of each resolved price are remembered in bounded memos,
and a call costs one small sum: genai-prices' own arithmetic (each priced
token class is billed for its leaf count, i.e. its count minus the priced
classes inside it; a tier applies to the whole request once input exceeds its
start), proved equal to `calc_price` model by model in
tests/unit/test_prices_database.py.

Token semantics match ours: genai-prices' `input_tokens` includes cache reads
and writes, `cache_write_tokens` includes the 1-hour writes, `output_tokens`
includes reasoning. A cache read on a model with no cache-read rate is billed
at the input rate, as genai-prices does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp

from ..config.memo import Memo
from ..config.pricing import invalid_fields
from ..usage.model import Usage

# Our provider names (providers.toml) that genai-prices spells differently.
# Any other name is looked up as a genai-prices provider id, exactly: a fuzzy
# match could price a custom provider ("my-openai-proxy") as another.
PROVIDER_IDS: Mapping[str, str] = {
    "gemini": "google", "moonshot": "moonshotai",
    "xai": "x-ai", "bedrock": "aws", "vertex": "google",  # "azure" is spelled alike
}

# Tiers a response reports for an ordinary call: priced at the standard rates.
STANDARD_TIERS = frozenset({"", "default", "standard", "auto", "on_demand"})

# genai-prices price keys we can count, and what they count. `per` is the
# unit's divisor (USD per million tokens, per thousand requests/searches);
# tests/unit/test_prices_database.py checks these against genai-prices' registry.
MTOK = 1_000_000
KCOUNT = 1_000
UNITS: Mapping[str, tuple[str, int]] = {
    "input_mtok": ("input_tokens", MTOK),
    "cache_read_mtok": ("cache_read_tokens", MTOK),
    "cache_write_mtok": ("cache_write_tokens", MTOK),
    "cache_write_1h_mtok": ("cache_write_1h_tokens", MTOK),
    "output_mtok": ("output_tokens", MTOK),
    "output_reasoning_mtok": ("output_reasoning_tokens", MTOK),
    "web_searches_kcount": ("web_searches", KCOUNT),
    "requests_kcount": ("requests", KCOUNT),
}

Rate = Decimal | gp.TieredPrices
RECENT_LIMIT = 10_000  # (model, tier) pairs whose rates of the current minute are kept


def price_context(tier: str | None) -> dict[str, str] | None:
    """The genai-prices request context for a response's service tier; None for the standard rates."""
    if tier is None:
        return None
    tier = tier.strip().lower()
    if tier in STANDARD_TIERS:
        return None
    if tier == "batch":  # Anthropic reports batch results with service_tier "batch"
        return {"processing": "batch"}
    return {"service_tier": tier}


def _rate_at(rate: Rate, input_tokens: int) -> Decimal:
    """The rate for a request with this much input: the highest tier it exceeds, else the base."""
    if isinstance(rate, Decimal):
        return rate
    for tier in reversed(rate.tiers):
        if input_tokens > tier.start:
            return tier.price
    return rate.base


@dataclass(frozen=True, slots=True)
class Rates:
    """The resolved prices of one model at one time and tier, as genai-prices states them."""

    rates: Mapping[str, Rate]  # price key -> rate, only the keys in UNITS
    uncounted: tuple[str, ...]  # priced units we never meter (audio, images, storage searches, ...)

    def cost(self, usage: Usage) -> Decimal | None:
        """USD for `usage`; None when its counts cannot be split into the priced classes.

        Each term is exact in Decimal, so summing per divisor and dividing once
        equals genai-prices' sum of per-term quotients (and costs one division).
        """
        rates = self.rates
        input_tokens = usage.input_tokens or 0
        output = usage.output_tokens or 0
        # Leaf counts: each priced class pays for what no more specific priced class inside it does.
        input_leaf, output_leaf = input_tokens, output
        per_million = Decimal(0)
        if "cache_read_mtok" in rates:
            reads = usage.cached_tokens or 0
            input_leaf -= reads
            per_million += _rate_at(rates["cache_read_mtok"], input_tokens) * reads
        if "cache_write_mtok" in rates:
            writes = usage.cache_write_tokens or 0
            input_leaf -= writes
            if "cache_write_1h_mtok" in rates:
                writes_1h = usage.cache_write_1h_tokens or 0
                writes -= writes_1h
                per_million += _rate_at(rates["cache_write_1h_mtok"], input_tokens) * writes_1h
            if writes < 0:
                return None
            per_million += _rate_at(rates["cache_write_mtok"], input_tokens) * writes
        if "output_reasoning_mtok" in rates:
            if "reasoning_tokens" in invalid_fields(usage):
                return None  # billed at its own rate, so its count matters
            reasoning = usage.reasoning_tokens or 0
            output_leaf -= reasoning
            per_million += _rate_at(rates["output_reasoning_mtok"], input_tokens) * reasoning
        if input_leaf < 0 or output_leaf < 0:
            return None  # parts larger than their whole: no true split exists
        if "input_mtok" in rates:
            per_million += _rate_at(rates["input_mtok"], input_tokens) * input_leaf
        if "output_mtok" in rates:
            per_million += _rate_at(rates["output_mtok"], input_tokens) * output_leaf
        per_thousand = Decimal(0)
        if "web_searches_kcount" in rates:
            per_thousand += _rate_at(rates["web_searches_kcount"], input_tokens) * (usage.web_search_requests or 0)
        if "requests_kcount" in rates:
            per_thousand += _rate_at(rates["requests_kcount"], input_tokens)  # one request: this call
        total = per_million / MTOK
        return total + per_thousand / KCOUNT if per_thousand else total

    def per_million(self) -> dict[str, Decimal | str]:
        """For `llm-proxy prices show`: each rate as text, tiers spelled out."""
        shown: dict[str, Decimal | str] = {}
        for key, rate in self.rates.items():
            if isinstance(rate, Decimal):
                shown[key] = rate
            else:
                tiers = ", ".join(f"{t.price} above {t.start} input tokens" for t in rate.tiers)
                shown[key] = f"{rate.base} ({tiers})"
        return shown


def compile_rates(model_price: gp.ModelPrice) -> Rates:
    rates: dict[str, Rate] = {}
    uncounted = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        if key in UNITS:
            rates[key] = value
        else:
            uncounted.append(key)
    return Rates(rates, tuple(sorted(uncounted)))


@dataclass(frozen=True, slots=True)
class DbModel:
    """A model genai-prices knows, at the provider it was found under."""

    provider: gp.Provider
    model: gp.ModelInfo

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def own(self) -> bool:
        """Listed by the provider itself, not borrowed from a fallback provider (no tier variants then)."""
        return any(self.model is m for m in self.provider.models)


class TierUnpriced(Exception):
    """The response's service tier has no price in the database for this model."""


class PriceDatabase:
    """Lookups and rates from one genai-prices snapshot."""

    def __init__(self, snapshot: data_snapshot.DataSnapshot | None = None) -> None:
        self.snapshot = snapshot or data_snapshot.get_snapshot()
        self.version = genai_prices.__version__
        self._providers = {p.id: p for p in self.snapshot.providers}
        self._find: Memo[tuple[str, str], DbModel | None] = Memo(self._lookup)
        # Keyed by objects of the snapshot, not by client names: bounded by the data itself.
        self._compiled: Memo[tuple[int, tuple[int, ...]], tuple[Rates, Any]] = Memo(self._compile)
        self._minute_safe: Memo[tuple[int], tuple[bool, gp.ModelInfo]] = Memo(self._check_minutes)
        self._recent: dict[tuple[int, bool, str | None], tuple[datetime, Rates, gp.ModelInfo]] = {}

    def provider_id(self, provider: str) -> str | None:
        pid = PROVIDER_IDS.get(provider, provider)
        return pid if pid in self._providers else None

    def find(self, provider: str, model: str | None) -> DbModel | None:
        if not model:
            return None
        return self._find((provider, model))

    def _lookup(self, key: tuple[str, str]) -> DbModel | None:
        provider, model = key
        pid = self.provider_id(provider)
        if pid is None:
            return None
        # find_model, not the snapshot's find_provider_model: that one remembers every name
        # it matched in an unbounded dict, and clients choose the names.
        found = self._providers[pid].find_model(model, all_providers=self.snapshot.providers)
        return None if found is None else DbModel(self._providers[pid], found)

    def rates(self, entry: DbModel, ts: datetime, tier: str | None) -> Rates:
        """The model's rates at `ts` for `tier`; raises TierUnpriced for a tier the database lacks.

        Prices change at whole minutes (dates, times of day), so the answer for
        a model and tier is kept for the rest of its minute: most calls then
        cost one dict lookup here.
        """
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        key = (id(entry.model), entry.own, tier)  # a borrowed model has no tier prices
        minute = ts.replace(second=0, microsecond=0) if self._whole_minutes(entry.model) else ts
        recent = self._recent.get(key)
        if recent is not None and recent[0] == minute and recent[2] is entry.model:
            return recent[1]
        rates = self._resolve(entry, ts, tier)
        if len(self._recent) < RECENT_LIMIT or key in self._recent:
            self._recent[key] = (minute, rates, entry.model)
        return rates

    def _whole_minutes(self, model: gp.ModelInfo) -> bool:
        return self._minute_safe((id(model),), model)[0]

    @staticmethod
    def _check_minutes(key: tuple[int], model: gp.ModelInfo) -> tuple[bool, gp.ModelInfo]:
        """Whether every time-of-day boundary of the model is a whole minute (the model is kept alive)."""
        constraints = [c.constraint for c in model.prices] if isinstance(model.prices, list) else []
        constraints += [v.constraint for v in model.price_variants or ()]
        bounds = [t for c in constraints if isinstance(c, gp.TimeOfDateConstraint) for t in (c.start_time, c.end_time)]
        return all(t.second == 0 and t.microsecond == 0 for t in bounds), model

    def _resolve(self, entry: DbModel, ts: datetime, tier: str | None) -> Rates:
        model = entry.model
        standard = model.get_prices(ts)
        context = price_context(tier)
        if context is None:
            return self._compiled((id(standard), ()), model, ts, None, standard)[0]
        matched = tuple(
            i for i, variant in enumerate(model.price_variants or ())
            if (variant.constraint is None or variant.constraint.active(ts))
            and all(context.get(k) == v for k, v in variant.when.items())
        ) if entry.own else ()
        if not matched:
            raise TierUnpriced(f"service tier {tier!r} has no price in genai-prices {self.version} for {model.id}")
        return self._compiled((id(standard), matched), model, ts, context, standard)[0]

    @staticmethod
    def _compile(key: tuple[int, tuple[int, ...]], model: gp.ModelInfo, ts: datetime,
                 context: dict[str, str] | None, standard: gp.ModelPrice) -> tuple[Rates, Any]:
        # `standard` is kept with the rates so that its id() cannot be reused while remembered.
        return compile_rates(model.get_prices(ts, context)), standard
