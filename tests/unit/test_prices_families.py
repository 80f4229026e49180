"""Every provider family priced end to end: its own usage shape, through our parser, against hand-computed costs.

The rates are those of the installed genai-prices snapshot (0.2.3) and of the
shipped pricing.toml; each expected figure is worked out in the comment above
it. Also the wrong prices issue 14 listed, as regression tests.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from llm_proxy.config.pricing import PriceBook, load_pricing, parse_price
from llm_proxy.paths import DEFAULT_PRICING
from llm_proxy.pricer import Pricer
from llm_proxy.record import Record
from llm_proxy import apis
from llm_proxy.usage import Usage, json_usage
from llm_proxy.usage.anthropic import messages_usage
from llm_proxy.usage.gemini import generate_usage
from llm_proxy.usage.ollama import native_usage
from llm_proxy.usage.openai import chat_usage, responses_usage

NOV = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # off-peak for DeepSeek, after every 2026 price change


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    """As shipped: pricing.toml over genai-prices."""
    return Pricer(load_pricing(DEFAULT_PRICING))


def price(pricer: Pricer, provider: str, model: str, usage: Usage, *, ts: datetime = NOV,
          tier: str | None = None, response_model: str | None = None) -> Decimal | None:
    row = Record(request_id="r", ts=ts, provider=provider, model=model, response_model=response_model,
                 api="openai-chat")
    return pricer.call(row, usage, tier=tier)


# --- each family's own usage shape -------------------------------------------------------

def test_openai_chat_cache_reads_writes_and_reasoning(pricer):
    usage = chat_usage({"prompt_tokens": 10000, "completion_tokens": 2000, "total_tokens": 12000,
                        "prompt_tokens_details": {"cached_tokens": 6000, "cache_write_tokens": 1000},
                        "completion_tokens_details": {"reasoning_tokens": 1500}})
    # gpt-5.6-luna since 2026-07-30: input 0.2, cache read 0.02, cache write 0.25, output 1.2.
    # (3000*0.2 + 6000*0.02 + 1000*0.25 + 2000*1.2) / 1e6 = (600 + 120 + 250 + 2400) / 1e6
    assert price(pricer, "openai", "gpt-5.6-luna", usage) == Decimal("0.00337")


def test_openai_responses_long_context_tier(pricer):
    usage = responses_usage({"input_tokens": 300000, "output_tokens": 1000, "total_tokens": 301000,
                             "input_tokens_details": {"cached_tokens": 100000},
                             "output_tokens_details": {"reasoning_tokens": 0}})
    # Above 272k prompt tokens the whole request is at the tier: input 0.4, read 0.04, output 1.8.
    # (200000*0.4 + 100000*0.04 + 1000*1.8) / 1e6 = (80000 + 4000 + 1800) / 1e6
    assert price(pricer, "openai", "gpt-5.6-luna", usage) == Decimal("0.0858")


def test_openai_dated_snapshot_answered(pricer):
    usage = chat_usage({"prompt_tokens": 1204, "completion_tokens": 312,
                        "prompt_tokens_details": {"cached_tokens": 1024}})
    # gpt-4o-mini-2024-07-18 is genai-prices' gpt-4o-mini: (180*0.15 + 1024*0.075 + 312*0.6) / 1e6
    assert price(pricer, "openai", "gpt-4o-mini", usage, response_model="gpt-4o-mini-2024-07-18") == Decimal(
        "0.000291")


def test_anthropic_reads_5m_and_1h_writes_and_web_search(pricer):
    usage = messages_usage({"input_tokens": 50, "cache_read_input_tokens": 10000,
                            "cache_creation_input_tokens": 2000,
                            "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
                            "output_tokens": 400, "server_tool_use": {"web_search_requests": 2},
                            "service_tier": "standard"})
    assert usage.input_tokens == 12050  # ours: input includes reads and writes, like genai-prices'
    # claude-sonnet-5-5: input 2, read 0.1, write 2.5, 1h write 4, output 10, $10 per 1000 searches.
    # (50*2 + 10000*0.1 + 1500*2.5 + 500*4 + 400*10) / 1e6 + 2*10/1000
    # = (100 + 1000 + 3750 + 2000 + 4000) / 1e6 + 0.02 = 0.01085 + 0.02
    assert price(pricer, "anthropic", "claude-sonnet-5-5", usage) == Decimal("0.03085")


def test_gemini_cached_thoughts_and_tool_prompt(pricer):
    usage = generate_usage({"promptTokenCount": 1200, "cachedContentTokenCount": 1000,
                            "candidatesTokenCount": 300, "thoughtsTokenCount": 500,
                            "toolUsePromptTokenCount": 40, "totalTokenCount": 2040})
    # gemini-3.5-flash-lite: input 0.3, read 0.03, output 2.5; input 1240 of which 1000 cached, output 800.
    # (240*0.3 + 1000*0.03 + 800*2.5) / 1e6 = (72 + 30 + 2000) / 1e6
    assert price(pricer, "gemini", "gemini-3.5-flash-lite", usage) == Decimal("0.002102")


def test_ollama_local_is_free_from_pricing_toml(pricer):
    usage = native_usage({"done": True, "prompt_eval_count": 26, "eval_count": 290})
    amount = price(pricer, "ollama", "llama3.1:8b", usage)
    assert amount == Decimal(0) and isinstance(amount, Decimal)


def test_other_openai_compatible_provider(pricer):
    usage = chat_usage({"prompt_tokens": 10000, "completion_tokens": 1000,
                        "prompt_tokens_details": {"cached_tokens": 4000}})
    # DeepSeek's current name, off-peak: input 0.15, read 0.003, output 0.6.
    # (6000*0.15 + 4000*0.003 + 1000*0.6) / 1e6 = (900 + 12 + 600) / 1e6
    assert price(pricer, "deepseek", "deepseek-flash", usage) == Decimal("0.001512")
    # Groq, no cache fields at all (not reported is 0, not unknown): (1000*0.05 + 100*0.08) / 1e6
    groq = chat_usage({"prompt_tokens": 1000, "completion_tokens": 100})
    assert price(pricer, "groq", "llama-3.1-8b-instant", groq) == Decimal("0.000058")


def test_a_provider_nobody_prices_is_null(pricer):
    assert price(pricer, "nvidia", "meta/llama-3.3-70b-instruct", Usage(input_tokens=1, output_tokens=1)) is None


# --- issue 14's wrong prices ------------------------------------------------------------------

TEN_K = Usage(input_tokens=10000, output_tokens=1000, cached_tokens=0)


@pytest.mark.parametrize("model,expected", [
    # gpt-5.6 (genai-prices' gpt-5.6-sol) since 2026-08-21: 4/20 (was 5/30): (10000*4 + 1000*20) / 1e6
    ("gpt-5.6", Decimal("0.06")),
    # gpt-5.6-terra since 2026-07-30: 2/12 (was 2.5/15): (10000*2 + 1000*12) / 1e6
    ("gpt-5.6-terra", Decimal("0.032")),
    # gpt-5.6-luna since 2026-07-30: 0.2/1.2 (was 1/6, billed 5x): (10000*0.2 + 1000*1.2) / 1e6
    ("gpt-5.6-luna", Decimal("0.0032")),
    # gpt-5.5-cyber: 12.5/75 under its own name, not gpt-5.5's 5/30: (10000*12.5 + 1000*75) / 1e6
    ("gpt-5.5-cyber", Decimal("0.2")),
])
def test_openai_prices_of_issue_14(pricer, model, expected):
    assert price(pricer, "openai", model, TEN_K) == expected


def test_gpt_5_6_luna_price_history_by_request_time(pricer):
    # Before 2026-07-30 it cost 1/6: (10000*1 + 1000*6) / 1e6
    assert price(pricer, "openai", "gpt-5.6-luna", TEN_K, ts=datetime(2026, 7, 1, tzinfo=UTC)) == Decimal("0.016")


@pytest.mark.parametrize("model,expected", [
    # deepseek-v4-pro since 2026-08-17, off-peak: 0.66/1.98: (10000*0.66 + 1000*1.98) / 1e6
    ("deepseek-v4-pro", Decimal("0.00858")),
    # deepseek-v4-flash since 2026-09-10, off-peak: 0.15/0.6: (10000*0.15 + 1000*0.6) / 1e6
    ("deepseek-v4-flash", Decimal("0.0021")),
    # deepseek-flash had no price at all: 0.15/0.6
    ("deepseek-flash", Decimal("0.0021")),
])
def test_deepseek_prices_of_issue_14(pricer, model, expected):
    assert price(pricer, "deepseek", model, TEN_K) == expected


def test_deepseek_peak_hours(pricer):
    # 02:30 UTC is peak: deepseek-v4-pro at 1.32/3.96: (10000*1.32 + 1000*3.96) / 1e6
    assert price(pricer, "deepseek", "deepseek-v4-pro", TEN_K,
                 ts=datetime(2026, 11, 1, 2, 30, tzinfo=UTC)) == Decimal("0.01716")


def test_codestral_latest_at_codestral_price_and_cached_mistral_is_priced(pricer):
    # codestral-latest 0.3/0.9 (was 1/3): (10000*0.3 + 1000*0.9) / 1e6
    assert price(pricer, "mistral", "codestral-latest", TEN_K) == Decimal("0.0039")
    # A Mistral model with no cache-read rate and cached tokens: billed at the input rate, not NULL.
    cached = Usage(input_tokens=10000, output_tokens=1000, cached_tokens=4000)
    assert price(pricer, "mistral", "codestral-latest", cached) == Decimal("0.0039")
    # codestral-2508 has one: (6000*0.3 + 4000*0.03 + 1000*0.9) / 1e6 = (1800 + 120 + 900) / 1e6
    assert price(pricer, "mistral", "codestral-2508", cached) == Decimal("0.00282")


def test_free_glm_with_cached_tokens_is_zero_not_null(pricer):
    cached = Usage(input_tokens=10000, output_tokens=1000, cached_tokens=4000)
    assert price(pricer, "zai", "glm-4.7-flash", cached) == Decimal(0)


def test_siblings_are_not_priced_as_each_other(pricer):
    # gemini-3.5-flash-lite 0.3/2.5, not gemini-3.5-flash's 1.5/9 (5x): (10000*0.3 + 1000*2.5) / 1e6
    assert price(pricer, "gemini", "gemini-3.5-flash-lite", TEN_K) == Decimal("0.0055")
    assert price(pricer, "gemini", "gemini-3.5-flash", TEN_K) == Decimal("0.024")
    # claude-sonnet-5-5 reads at 0.1, not claude-sonnet-5's 0.2:
    # (2000*2 + 8000*0.1 + 1000*10) / 1e6 = (4000 + 800 + 10000) / 1e6
    reads = Usage(input_tokens=10000, output_tokens=1000, cached_tokens=8000, cache_write_tokens=0)
    assert price(pricer, "anthropic", "claude-sonnet-5-5", reads) == Decimal("0.0148")
    assert price(pricer, "anthropic", "claude-sonnet-5", reads) == Decimal("0.0156")


def test_deepseek_r1_distill_is_not_priced_as_deepseek_r1_where_the_database_knows_it():
    # An operator's "deepseek-r1" prefix at Groq: the distill model has its own price in the database,
    # 0.75/0.99: (10000*0.75 + 1000*0.99) / 1e6, not the prefix's (10000*3 + 1000*7) / 1e6 = 0.037.
    operator = Pricer(PriceBook({"groq": {"deepseek-r1": parse_price({"input": 3, "output": 7}, "t")}}))
    assert price(operator, "groq", "deepseek-r1-distill-llama-70b", TEN_K) == Decimal("0.00849")
    # Where the database does not know the distill model (Together), `prices check` flags the prefix match.


# --- pricing.toml first, and the sibling rule ---------------------------------------------------

def book(**entries: dict) -> PriceBook:
    return PriceBook({"openai": {key: parse_price(rates, key) for key, rates in entries.items()}})


def test_an_exact_pricing_toml_entry_always_wins():
    pricer = Pricer(book(**{"gpt-5.5-cyber": {"input": 1, "output": 1}}))
    assert price(pricer, "openai", "gpt-5.5-cyber", TEN_K) == Decimal("0.011")


def test_a_prefix_does_not_price_a_model_the_database_knows_under_its_own_name(caplog):
    pricer = Pricer(book(**{"gpt-5.5": {"input": 5, "output": 30}}))
    with caplog.at_level(logging.WARNING, logger="llm_proxy.pricer"):
        assert price(pricer, "openai", "gpt-5.5-cyber", TEN_K) == Decimal("0.2")  # the database's 12.5/75
        assert price(pricer, "openai", "gpt-5.5-cyber", TEN_K) == Decimal("0.2")
    assert len(caplog.records) == 1 and "'gpt-5.5'" in caplog.records[0].getMessage()
    # The prefix still prices what the database does not tell apart from it, e.g. a dated snapshot:
    # (10000*5 + 1000*30) / 1e6
    assert price(pricer, "openai", "gpt-5.5-2026-04-23", TEN_K) == Decimal("0.08")
    # ... and names the database does not know at all.
    assert price(pricer, "openai", "gpt-5.5-my-finetune", TEN_K) == Decimal("0.08")


def test_pricing_toml_alone_when_the_database_is_off():
    pricer = Pricer(book(**{"gpt-5.5": {"input": 5, "output": 30}}), database=None)
    assert price(pricer, "openai", "gpt-5.5-cyber", TEN_K) == Decimal("0.08")
    assert price(pricer, "openai", "gpt-4o-mini", TEN_K) is None


# --- service tiers and batch ----------------------------------------------------------------

@pytest.mark.parametrize("tier,expected", [
    # standard: (10000*0.2 + 1000*1.2) / 1e6
    (None, Decimal("0.0032")), ("default", Decimal("0.0032")),
    # flex and batch at half: (10000*0.1 + 1000*0.6) / 1e6
    ("flex", Decimal("0.0016")), ("batch", Decimal("0.0016")),
    # priority at double: (10000*0.4 + 1000*2.4) / 1e6
    ("priority", Decimal("0.0064")),
    # a tier the database does not price is unknown, never the standard price
    ("scale", None),
])
def test_openai_service_tiers(pricer, tier, expected):
    assert price(pricer, "openai", "gpt-5.6-luna", TEN_K, tier=tier) == expected


def test_anthropic_batch_and_the_tier_read_from_the_usage(pricer):
    usage, _ = json_usage(apis.ANTHROPIC_MESSAGES, {"usage": {
        "input_tokens": 50, "cache_read_input_tokens": 10000, "cache_creation_input_tokens": 2000,
        "cache_creation": {"ephemeral_1h_input_tokens": 500}, "output_tokens": 400, "service_tier": "batch"}})
    assert (usage.input_tokens, usage.service_tier) == (12050, "batch")
    # claude-sonnet-5-5 batch: input 1, read 0.05, write 1.25, 1h write 2, output 5.
    # (50*1 + 10000*0.05 + 1500*1.25 + 500*2 + 400*5) / 1e6 = (50 + 500 + 1875 + 1000 + 2000) / 1e6
    assert price(pricer, "anthropic", "claude-sonnet-5-5", usage) == Decimal("0.005425")
