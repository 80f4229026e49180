"""The genai-prices adapter: its fast sum equals genai-prices' own calc_price, no I/O, bounded memory."""

from __future__ import annotations

import random
import socket
import warnings
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import update_prices
from genai_prices.units import _get_registry

from llm_proxy.prices.database import UNITS, DbModel, PriceDatabase, TierUnpriced, price_context
from llm_proxy.usage import Usage

# genai-prices ids of the providers llm-proxy ships (providers.toml), after PROVIDER_IDS.
SHIPPED = ("openai", "anthropic", "google", "mistral", "groq", "deepseek", "openrouter", "together",
           "moonshotai", "zai", "minimax")


@pytest.fixture(scope="module")
def database() -> PriceDatabase:
    return PriceDatabase()


def test_units_are_genai_prices_own(database):
    registry = _get_registry()
    for price_key, (usage_key, per) in UNITS.items():
        unit = registry.unit_for_price_key(price_key)
        assert (unit.usage_key, unit.per) == (usage_key, per)
    # The leaf rules in Rates.cost: these classes sit inside these others.
    parents = {"cache_read_tokens": "input_tokens", "cache_write_tokens": "input_tokens",
               "cache_write_1h_tokens": "cache_write_tokens", "output_reasoning_tokens": "output_tokens"}
    for child, parent in parents.items():
        assert parent in registry.ancestor_usage_keys(child)


def test_the_fast_sum_is_genai_prices_calc_price_for_every_shipped_model(database):
    """Every model of every shipped provider, random usages, times and tiers: equal to the last digit."""
    rnd = random.Random(14)
    compared = 0
    for pid in SHIPPED:
        provider = database._providers[pid]
        for model in provider.models:
            for _ in range(4):
                inp = rnd.choice([0, 7, 1200, 150_000, 250_000, 600_000])
                reads, writes = rnd.randint(0, inp // 3), rnd.randint(0, inp // 3)
                writes_1h = rnd.randint(0, writes)
                out = rnd.randint(0, 9000)
                reasoning, searches = rnd.randint(0, out), rnd.choice([0, 0, 3])
                ts = datetime(2026, rnd.randint(1, 11), rnd.randint(1, 28), rnd.randint(0, 23), tzinfo=UTC)
                tier = rnd.choice([None, None, "flex", "priority", "batch"])
                usage = Usage(input_tokens=inp, output_tokens=out, cached_tokens=reads, cache_write_tokens=writes,
                              cache_write_1h_tokens=writes_1h, reasoning_tokens=reasoning,
                              web_search_requests=searches)
                try:
                    ours = database.rates(DbModel(provider, model), ts, tier).cost(usage)
                except TierUnpriced:
                    continue
                theirs_usage = genai_prices.Usage(
                    input_tokens=inp, output_tokens=out, cache_read_tokens=reads, cache_write_tokens=writes,
                    cache_write_1h_tokens=writes_1h, output_reasoning_tokens=reasoning, web_searches=searches)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    theirs = model.calc_price(theirs_usage, provider, genai_request_timestamp=ts,
                                              price_context=price_context(tier)).total_price
                assert ours == theirs, (pid, model.id, ts, tier, usage)
                compared += 1
    assert compared > 1000


def test_tiers_map_to_genai_prices_context():
    assert price_context(None) is None
    for standard in ("default", "standard", "auto", "on_demand", " Default "):
        assert price_context(standard) is None
    assert price_context("flex") == {"service_tier": "flex"}
    assert price_context("PRIORITY") == {"service_tier": "priority"}
    assert price_context("batch") == {"processing": "batch"}


def test_a_tier_the_database_does_not_price_is_unpriced(database):
    entry = database.find("openai", "gpt-5.6-luna")
    with pytest.raises(TierUnpriced, match="'scale'"):
        database.rates(entry, datetime(2026, 11, 1, tzinfo=UTC), "scale")
    # flex is priced for gpt-5.6-luna only from 2026-10-12 on
    with pytest.raises(TierUnpriced, match="'flex'"):
        database.rates(entry, datetime(2026, 10, 1, tzinfo=UTC), "flex")


def test_no_network_and_no_auto_update(database, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("genai-prices tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = PriceDatabase()
    entry = fresh.find("anthropic", "claude-sonnet-5-5")
    usage = Usage(input_tokens=100, output_tokens=10, cached_tokens=0, cache_write_tokens=0)
    assert fresh.rates(entry, datetime(2026, 11, 1, tzinfo=UTC), None).cost(usage) == Decimal("0.0003")
    assert update_prices._shared_updater.ref_count == 0  # the background updater never started
    assert not fresh.snapshot.from_auto_update


def test_memory_for_client_names_is_bounded(database):
    fresh = PriceDatabase()
    # A starts_with rule matches endless names: none may grow genai-prices' own unbounded cache.
    before = len(fresh.snapshot._lookup_cache)
    for i in range(12_000):
        fresh.find("deepseek", f"deepseek-v4-flash-{i}")
    assert len(fresh._find) == 10_000
    assert len(fresh.snapshot._lookup_cache) == before


def test_rates_are_compiled_once_per_resolved_price(database):
    entry = database.find("openai", "gpt-5.6-terra")
    first = database.rates(entry, datetime(2026, 11, 1, 9, tzinfo=UTC), "flex")
    again = database.rates(entry, datetime(2026, 11, 2, 17, tzinfo=UTC), "flex")
    assert first is again


def test_time_of_day_prices(database):
    """DeepSeek's peak hours (01:00-04:00 and 06:00-10:00 UTC) cost double, by the call's own time."""
    entry = database.find("deepseek", "deepseek-v4-flash")
    usage = Usage(input_tokens=10_000, output_tokens=1_000, cached_tokens=4_000)
    off_peak = database.rates(entry, datetime(2026, 11, 1, 12, tzinfo=UTC), None).cost(usage)
    peak = database.rates(entry, datetime(2026, 11, 1, 2, 30, tzinfo=UTC), None).cost(usage)
    # (6000*0.15 + 4000*0.003 + 1000*0.6) / 1e6 and (6000*0.3 + 4000*0.006 + 1000*1.2) / 1e6
    assert (off_peak, peak) == (Decimal("0.001512"), Decimal("0.003024"))


def test_the_minute_cache_never_outlives_a_price_change():
    database = PriceDatabase()
    entry = database.find("deepseek", "deepseek-v4-flash")
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    before = database.rates(entry, datetime(2026, 11, 1, 0, 59, 59, 999999, tzinfo=UTC), None).cost(usage)
    at_peak = database.rates(entry, datetime(2026, 11, 1, 1, 0, 0, tzinfo=UTC), None).cost(usage)
    assert (before, at_peak) == (Decimal("0.15"), Decimal("0.3"))
    # and back, on the same day and across days
    assert database.rates(entry, datetime(2026, 11, 1, 4, 0, tzinfo=UTC), None).cost(usage) == Decimal("0.15")
    assert database.rates(entry, datetime(2026, 11, 2, 1, 0, tzinfo=UTC), None).cost(usage) == Decimal("0.3")
