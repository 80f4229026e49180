"""Pricing rows: plain calls, free shapes, and relayed calls summed over their attempts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

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
