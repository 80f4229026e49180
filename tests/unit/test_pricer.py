"""Pricing rows: plain calls, free shapes, and relayed calls summed over their attempts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from llm_proxy.config.models import Target
from llm_proxy.config.pricing import PriceBook, Price
from llm_proxy.config.providers import Provider
from llm_proxy.pricer import Pricer
from llm_proxy.record import Record
from llm_proxy.rescue.attempts import Attempt
from llm_proxy.rescue.plan import Plan
from llm_proxy.rescue.relay import RelayJob
from llm_proxy.usage import Usage

BOOK = PriceBook({
    "openai": {"gpt-4o-mini": Price(Decimal("0.15"), Decimal("0.60"), cached_input=Decimal("0.075"))},
    "anthropic": {"claude-haiku-4-5": Price(Decimal("1"), Decimal("5"))},
})
OPENAI = Provider("openai", "https://api.openai.com", "openai", ("api.openai.com",), openai_base="/v1")


def record(**fields) -> Record:
    return Record(request_id="r1", ts=datetime(2026, 1, 1, tzinfo=UTC), **fields)


def job(*attempts: Attempt, served: Target | None) -> RelayJob:
    plan = Plan((Target("openai"), Target("anthropic", "claude-haiku-4-5")), retries=0)
    j = RelayJob(plan, "openai-chat", "gpt-4o-mini", OPENAI, "https://api.openai.com/v1/chat/completions")
    j.attempts.extend(attempts)
    j.served, j.upstream_url = served, "https://api.anthropic.com/v1/messages"
    return j


def test_plain_call_and_free_shapes():
    pricer = Pricer(BOOK)
    usage = Usage(input_tokens=1000, output_tokens=100, cached_tokens=200)
    assert pricer.call(record(provider="openai", model="gpt-4o-mini", api="openai-chat"), usage) == Decimal(
        "0.000195")  # (800 * 0.15 + 200 * 0.075 + 100 * 0.60) / 1e6
    assert pricer.call(record(provider="anthropic", api="anthropic-count-tokens"), Usage()) == 0
    assert pricer.call(record(provider="openai", model="gpt-4o-mini", api="openai-chat"), Usage()) is None


def test_relayed_call_costs_what_each_attempt_billed():
    failed = Attempt("openai", "gpt-4o-mini", status=503, error="HTTP 503")
    partial = Attempt("openai", "gpt-4o-mini", status=200, error="stream ended early",
                      usage=Usage(input_tokens=100, output_tokens=10))
    served = Attempt("anthropic", "claude-haiku-4-5", status=200, response_model="claude-haiku-4-5",
                     usage=Usage(input_tokens=1000, output_tokens=6, cached_tokens=0, cache_write_tokens=0))
    row = record(provider="openai", model="gpt-4o-mini", api="openai-chat")
    total = Pricer(BOOK).relayed(row, job(failed, partial, served, served=Target("anthropic", "claude-haiku-4-5")))
    # (100 * 0.15 + 10 * 0.60) / 1e6 + (1000 * 1 + 6 * 5) / 1e6
    assert total == Decimal("0.000021") + Decimal("0.00103")
    assert (row.provider, row.response_model, row.input_tokens, row.output_tokens) == (
        "anthropic", "claude-haiku-4-5", 1000, 6)
    assert row.fallback_from == "openai:gpt-4o-mini"
    assert [a["status"] for a in row.attempts] == [503, 200, 200]
    assert "cost_usd" not in row.attempts[0] and row.attempts[2]["cost_usd"] == "0.00103"


def test_relayed_call_that_never_got_usage_costs_null_and_has_no_tokens():
    row = record(provider="openai", model="gpt-4o-mini", api="openai-chat", input_tokens=5)
    failed = Attempt("openai", "gpt-4o-mini", status=503, error="HTTP 503")
    assert Pricer(BOOK).relayed(row, job(failed, served=None)) is None
    assert (row.input_tokens, row.fallback_from, row.provider) == (None, None, "openai")


# --- issue 8: unknown counts, negative costs, hostile model names -------------------------

def test_prompt_tokens_that_are_not_a_count_give_a_null_cost_not_a_guess():
    from llm_proxy.usage.openai import chat_usage

    usage = chat_usage({"prompt_tokens": "abc", "completion_tokens": 10, "total_tokens": 10})
    assert usage.input_tokens is None and usage.output_tokens == 10
    row = record(provider="openai", model="gpt-4o-mini", api="openai-chat")
    assert Pricer(BOOK, database=None).call(row, usage) is None
    assert Pricer(BOOK).call(row, usage) is None


def test_whatever_the_counts_the_cost_is_null_or_not_negative():
    from hypothesis import given, settings, strategies as st

    counts = st.one_of(st.none(), st.integers(min_value=0, max_value=10**7))
    pricers = [Pricer(BOOK, database=None), Pricer(PriceBook({}))]  # pricing.toml, and genai-prices

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"),
                            ("anthropic", "claude-sonnet-5-5"), ("openai", "gpt-5.6-luna")]),
           counts, counts, counts, counts, counts, counts)
    def check(target, inp, out, cached, writes, writes_1h, reasoning):
        usage = Usage(input_tokens=inp, output_tokens=out)
        # Set after __post_init__, as a stored row from before counts were checked reads back.
        usage.cached_tokens, usage.cache_write_tokens = cached, writes
        usage.cache_write_1h_tokens, usage.reasoning_tokens = writes_1h, reasoning
        for pricer in pricers:
            amount = pricer.usage(*target[:1], None, target[1], usage, ts=datetime(2026, 11, 1, tzinfo=UTC))
            assert amount is None or amount >= 0

    check()


@pytest.mark.parametrize("cached", [5000, -5])
def test_negative_split_is_null_on_both_sources(cached):
    usage = Usage(input_tokens=1000, output_tokens=10)
    usage.cached_tokens = cached  # cached > input, or < 0: a row stored before counts were checked
    ts = datetime(2026, 11, 1, tzinfo=UTC)
    assert Pricer(BOOK, database=None).usage("openai", None, "gpt-4o-mini", usage, ts=ts) is None
    assert Pricer(PriceBook({})).usage("openai", None, "gpt-4o-mini", usage, ts=ts) is None


def test_a_lone_surrogate_in_the_model_name_cannot_break_the_warning(caplog):
    # Issue 8: `{"model": "gpt-4o-mini\ud800"}`: the pricing warning itself failed to encode; row lost.
    pricer = Pricer(PriceBook({}), database=None)
    row = record(provider="openai", model="gpt-4o-mini\ud800\n", api="openai-chat")
    with caplog.at_level("WARNING", logger="llm_proxy.pricer"):
        assert pricer.call(row, Usage(input_tokens=1, output_tokens=1)) is None
        assert pricer.call(row, Usage(input_tokens=1, output_tokens=1)) is None
    assert len(caplog.records) == 1  # once per model
    message = caplog.records[0].getMessage()
    message.encode("utf-8")  # raised UnicodeEncodeError before
    assert "\\ud800" in message and "\n" not in message


def test_warned_names_are_bounded(caplog):
    # Names come from clients: neither the memory of warned names nor the log may grow with them.
    pricer = Pricer(PriceBook({}), database=None)
    with caplog.at_level("WARNING", logger="llm_proxy.pricer"):
        for i in range(3000):
            pricer.usage("openai", None, f"made-up-{i}", Usage(input_tokens=1, output_tokens=1))
    assert len(pricer._warned) == 1024
    assert len(caplog.records) == 1025
    assert "further models not logged" in caplog.records[-1].getMessage()


def test_a_long_model_name_is_logged_shortened(caplog):
    pricer = Pricer(PriceBook({}), database=None)
    with caplog.at_level("WARNING", logger="llm_proxy.pricer"):
        pricer.usage("openai", None, "x" * 100_000, Usage(input_tokens=1, output_tokens=1))
    assert len(caplog.records[0].getMessage()) < 400
