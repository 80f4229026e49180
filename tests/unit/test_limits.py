"""Sliding windows, the per-key Limiter, the global Gate and the SpendBook, on fake clocks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.limits.budget import SpendBook
from llm_proxy.limits.gate import FULL, TIMEOUT, Gate
from llm_proxy.limits.limiter import Limiter, Refusal
from llm_proxy.limits.windows import SlidingWindow

WALL = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def vkey(name: str = "k", **kw) -> VirtualKey:
    return VirtualKey(name=name, hash=hash_secret(name), **kw)


# --- SlidingWindow -------------------------------------------------------------------------------

def test_window_total_prunes_after_sixty_seconds():
    w = SlidingWindow()
    w.add(0.0)
    w.add(10.0, 2)
    w.add(30.0, 3)
    assert w.total(30.0) == 6
    assert w.total(59.999) == 6
    assert w.total(60.0) == 5  # the event at 0 leaves exactly one span later
    assert w.total(70.0) == 3
    assert w.total(90.0) == 0


def test_window_ignores_non_positive_weights():
    w = SlidingWindow()
    w.add(0.0, 0)
    w.add(0.0, -5)
    assert w.total(0.0) == 0


def test_window_custom_span():
    w = SlidingWindow(span=1.0)
    w.add(0.0, 4)
    assert (w.total(0.5), w.total(1.0)) == (4, 0)


def test_seconds_until_below():
    w = SlidingWindow()
    w.add(0.0)
    w.add(10.0, 2)
    w.add(30.0, 3)
    assert w.seconds_until_below(30.0, 6) == 30.0  # needs the event at 0 gone
    assert w.seconds_until_below(30.0, 5) == 40.0  # needs 0 and 10 gone
    assert w.seconds_until_below(30.0, 4) == 40.0
    assert w.seconds_until_below(30.0, 3) == 60.0  # 3 is not below 3: the event at 30 must go too
    assert w.seconds_until_below(30.0, 1) == 60.0  # needs all three gone
    assert w.seconds_until_below(45.5, 6) == 14.5
    assert SlidingWindow().seconds_until_below(0.0, 1) == 0.0


def test_seconds_until_below_is_zero_when_already_below():
    w = SlidingWindow()
    w.add(0.0)
    w.add(10.0, 2)
    w.add(30.0, 3)
    assert w.seconds_until_below(30.0, 7) == 0.0


def test_close_events_share_an_entry_and_leave_late_never_early():
    w = SlidingWindow()  # times are binary fractions, so the arithmetic is exact
    w.add(0.0)
    w.add(0.0625, 2)  # within 0.1 s of the entry's first event: merged, stamped 0.0625
    w.add(0.25)
    assert len(w) == 2
    assert w.seconds_until_below(0.25, 2) == 59.8125  # the shared entry leaves at 0.0625 + 60
    assert w.total(60.0) == 4  # the event at 0 is still counted (late by 0.0625 s) ...
    assert w.total(60.0625) == 1  # ... and leaves with the one it shares an entry with


def test_rpm_limit_holds_across_merged_events():
    lim, key = Limiter(), vkey(rpm=2)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.admit(key, 0.0625, None, WALL) is None
    assert lim.admit(key, 60.0, None, WALL).code == "rate_limit_exceeded"  # 0.0625 is not a minute ago yet
    assert lim.admit(key, 60.0625, None, WALL) is None


# --- Limiter ---------------------------------------------------------------------------------------

def test_unlimited_key_is_always_admitted():
    lim = Limiter()
    for i in range(100):
        assert lim.admit(vkey(), float(i), None, WALL) is None
    assert lim.in_flight("k") == 100


def test_parallel_limit():
    lim, key = Limiter(), vkey(parallel=2)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.in_flight("k") == 2
    assert lim.admit(key, 0.0, None, WALL) == Refusal(
        429, "key 'k' already has 2 requests in flight (its parallel limit)", "parallel_limit_exceeded",
        {"retry-after": "1", "retry-after-ms": "1000"},
    )
    assert lim.in_flight("k") == 2  # a refusal reserves nothing
    lim.release("k")
    assert lim.in_flight("k") == 1
    assert lim.admit(key, 0.0, None, WALL) is None


def test_release_never_goes_negative():
    lim, key = Limiter(), vkey(parallel=1)
    lim.release("k")
    lim.release("k")
    assert lim.in_flight("k") == 0
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.in_flight("k") == 1
    assert lim.admit(key, 0.0, None, WALL).code == "parallel_limit_exceeded"
    lim.release("k")
    lim.release("k")
    assert lim.in_flight("k") == 0


def test_rpm_limit_headers():
    lim, key = Limiter(), vkey(rpm=2)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.admit(key, 10.0, None, WALL) is None
    assert lim.admit(key, 20.0, None, WALL) == Refusal(
        429, "key 'k' is over its limit of 2 requests per minute", "rate_limit_exceeded", {
            "retry-after": "40", "retry-after-ms": "40000",
            "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "40.000s",
        },
    )


def test_rpm_fractional_wait_rounds_retry_after_up():
    lim, key = Limiter(), vkey(rpm=1)
    assert lim.admit(key, 0.0, None, WALL) is None
    refusal = lim.admit(key, 20.25, None, WALL)
    assert refusal.headers == {
        "retry-after": "40", "retry-after-ms": "39750",
        "x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "39.750s",
    }
    short = lim.admit(key, 59.9996, None, WALL)  # 0.4 ms to go: never "0"
    assert (short.headers["retry-after"], short.headers["retry-after-ms"]) == ("1", "1")


def test_rpm_window_slides_and_refusals_do_not_count():
    lim, key = Limiter(), vkey(rpm=2)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.admit(key, 10.0, None, WALL) is None
    for t in (20.0, 30.0, 59.0):
        assert lim.admit(key, t, None, WALL).code == "rate_limit_exceeded"
    assert lim.admit(key, 60.0, None, WALL) is None  # the request at 0 left the window
    refusal = lim.admit(key, 61.0, None, WALL)
    assert refusal.headers["retry-after"] == "9"  # the one at 10 leaves at 70
    assert lim.in_flight("k") == 3  # admitted ones only (nobody released)


def test_admitted_request_counts_against_rpm_and_parallel():
    lim, key = Limiter(), vkey(rpm=1, parallel=5)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.in_flight("k") == 1
    lim.release("k")
    assert lim.admit(key, 1.0, None, WALL).code == "rate_limit_exceeded"
    assert lim.in_flight("k") == 0


def test_parallel_is_checked_before_rpm():
    lim, key = Limiter(), vkey(rpm=1, parallel=1)
    assert lim.admit(key, 0.0, None, WALL) is None
    assert lim.admit(key, 1.0, None, WALL).code == "parallel_limit_exceeded"
    lim.release("k")
    assert lim.admit(key, 1.0, None, WALL).code == "rate_limit_exceeded"


def test_tpm_limit_counts_used_tokens():
    lim, key = Limiter(), vkey(tpm=100)
    assert lim.admit(key, 0.0, None, WALL) is None
    lim.used_tokens("k", 0.0, 60)
    assert lim.admit(key, 1.0, None, WALL) is None  # 60 < 100
    lim.used_tokens("k", 5.0, 50)
    assert lim.admit(key, 10.0, None, WALL) == Refusal(
        429, "key 'k' is over its limit of 100 tokens per minute", "rate_limit_exceeded", {
            "retry-after": "50", "retry-after-ms": "50000",
            "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "50.000s",
        },
    )
    assert lim.admit(key, 60.0, None, WALL) is None  # the 60 tokens at 0 left; 50 remain


def test_tpm_exactly_at_limit_is_refused_and_zero_usage_ignored():
    lim, key = Limiter(), vkey(tpm=100)
    assert lim.admit(key, 0.0, None, WALL) is None  # tokens always come from an admitted call
    lim.used_tokens("k", 0.0, 0)
    lim.used_tokens("k", 0.0, 99)
    assert lim.admit(key, 1.0, None, WALL) is None
    lim.used_tokens("k", 2.0, 1)
    assert lim.admit(key, 3.0, None, WALL).code == "rate_limit_exceeded"


def test_rpm_is_checked_before_tpm():
    lim, key = Limiter(), vkey(rpm=1, tpm=10)
    assert lim.admit(key, 0.0, None, WALL) is None
    lim.used_tokens("k", 0.0, 500)
    assert "x-ratelimit-limit-requests" in lim.admit(key, 1.0, None, WALL).headers


def test_budget_refusal_monthly_retry_after_is_next_month():
    lim, key = Limiter(), vkey(budget=Decimal("10"))
    wall = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert lim.admit(key, 0.0, Decimal("10.00"), wall) == Refusal(
        429, "key 'k' has spent $10.00 of its $10 monthly budget", "insufficient_quota",
        {"retry-after": "3600", "retry-after-ms": "3600000"},
    )
    assert lim.in_flight("k") == 0


def test_budget_refusal_mid_month():
    lim, key = Limiter(), vkey(budget=Decimal("5"))
    wall = datetime(2026, 2, 10, tzinfo=UTC)  # 19 days to 1 March
    assert lim.admit(key, 0.0, Decimal("7.5"), wall).headers == {
        "retry-after": "1641600", "retry-after-ms": "1641600000"}


def test_budget_refusal_rolling_period_hints_an_hour():
    lim, key = Limiter(), vkey(budget=Decimal("5"), period="7d")
    refusal = lim.admit(key, 0.0, Decimal("5"), WALL)
    assert refusal == Refusal(429, "key 'k' has spent $5 of its $5 7d budget", "insufficient_quota",
                              {"retry-after": "3600", "retry-after-ms": "3600000"})


def test_budget_under_and_unknown_spend_are_admitted():
    lim, key = Limiter(), vkey(budget=Decimal("10"))
    assert lim.admit(key, 0.0, Decimal("9.99"), WALL) is None
    assert lim.admit(key, 0.0, None, WALL) is None  # the caller decides about unknown spend
    assert lim.in_flight("k") == 2


def test_zero_budget_refuses_everything():
    lim, key = Limiter(), vkey(budget=Decimal("0"))
    assert lim.admit(key, 0.0, Decimal("0"), WALL).code == "insufficient_quota"


def test_tpm_is_checked_before_budget():
    lim, key = Limiter(), vkey(tpm=10, budget=Decimal("1"))
    assert lim.admit(key, 0.0, Decimal("0"), WALL) is None
    lim.used_tokens("k", 0.0, 10)
    assert lim.admit(key, 1.0, Decimal("5"), WALL).message == "key 'k' is over its limit of 10 tokens per minute"


def test_keys_are_counted_separately():
    lim = Limiter()
    a, b = vkey("a", rpm=1, parallel=1), vkey("b", rpm=1, parallel=1)
    assert lim.admit(a, 0.0, None, WALL) is None
    assert lim.admit(b, 0.0, None, WALL) is None
    assert (lim.in_flight("a"), lim.in_flight("b")) == (1, 1)
    lim.release("a")
    assert lim.in_flight("b") == 1


# --- Gate ------------------------------------------------------------------------------------------

def test_gate_fifo_handover():
    async def scenario():
        gate = Gate(limit=2, max_waiting=10, timeout=1.0)
        assert await gate.enter() is None
        assert await gate.enter() is None
        assert (gate.active, gate.waiting) == (2, 0)
        order: list[str] = []

        async def waiter(name: str):
            result = await gate.enter()
            order.append(name)
            return result

        tasks = []
        for name in ("c", "d", "e"):
            tasks.append(asyncio.create_task(waiter(name)))
            await asyncio.sleep(0)  # queue in this order
        assert (gate.active, gate.waiting, order) == (2, 3, [])
        gate.leave()
        await asyncio.sleep(0)
        assert (order, gate.active, gate.waiting) == (["c"], 2, 2)
        gate.leave()
        gate.leave()
        await asyncio.sleep(0)
        assert (order, gate.active, gate.waiting) == (["c", "d", "e"], 2, 0)
        assert [t.result() for t in tasks] == [None, None, None]
        gate.leave()
        gate.leave()
        assert gate.active == 0

    asyncio.run(scenario())


def test_gate_newcomer_does_not_jump_the_queue():
    async def scenario():
        gate = Gate(limit=1, max_waiting=10, timeout=1.0)
        assert await gate.enter() is None
        first = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.leave()  # handed to `first`, not free for anyone
        assert gate.active == 1
        late = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        assert first.done() and first.result() is None
        assert not late.done()
        assert gate.waiting == 1
        gate.leave()
        assert await late is None
        gate.leave()
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_gate_timeout_does_not_leak_a_slot():
    async def scenario():
        gate = Gate(limit=1, max_waiting=10, timeout=0.05)
        assert await gate.enter() is None
        assert await gate.enter() == TIMEOUT
        assert (gate.active, gate.waiting) == (1, 0)
        gate.leave()
        assert (gate.active, gate.waiting) == (0, 0)
        assert await gate.enter() is None  # free again at once
        assert gate.active == 1

    asyncio.run(scenario())


def test_gate_timed_out_waiter_is_skipped_on_leave():
    async def scenario():
        gate = Gate(limit=1, max_waiting=10, timeout=0.05)
        assert await gate.enter() is None
        slow = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.timeout = 1.0
        patient = asyncio.create_task(gate.enter())
        assert await slow == TIMEOUT
        assert gate.waiting == 1
        gate.leave()
        assert await patient is None
        assert (gate.active, gate.waiting) == (1, 0)

    asyncio.run(scenario())


def test_gate_full_queue():
    async def scenario():
        gate = Gate(limit=1, max_waiting=1, timeout=1.0)
        assert await gate.enter() is None
        queued = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        assert gate.waiting == 1
        assert await gate.enter() == FULL
        assert (gate.active, gate.waiting) == (1, 1)
        gate.leave()
        assert await queued is None
        assert (gate.active, gate.waiting) == (1, 0)

    asyncio.run(scenario())


def test_gate_without_queue_is_full_at_once():
    async def scenario():
        gate = Gate(limit=1, max_waiting=0, timeout=1.0)
        assert await gate.enter() is None
        assert await gate.enter() == FULL
        assert gate.active == 1

    asyncio.run(scenario())


def test_gate_leave_without_waiters():
    gate = Gate(limit=3, max_waiting=0, timeout=1.0)
    gate.active = 2
    gate.leave()
    assert gate.active == 1
    gate.leave()
    gate.leave()
    assert gate.active == 0


# --- SpendBook -----------------------------------------------------------------------------------

def rec(key_id: str | None, cost: str | None) -> tuple[str | None, Decimal | None]:
    """A row as the spend book sees it: (key_id, cost_usd)."""
    return key_id, None if cost is None else Decimal(cost)


class FakeQuery:
    def __init__(self, sums: dict[str, Decimal]) -> None:
        self.sums = sums
        self.asked: list[dict[str, datetime]] = []

    def __call__(self, windows):
        self.asked.append(dict(windows))
        return self.sums


def budget_book() -> SpendBook:
    book = SpendBook()
    book.use_keys(KeyRing([
        vkey("a", budget=Decimal("10")),
        vkey("b", budget=Decimal("5"), period="7d"),
        vkey("c"),
    ]))
    return book


def test_spend_is_unknown_before_the_first_refresh():
    book = budget_book()
    assert book.spend("a") is None
    assert book.stale is True
    assert not book.loaded.is_set()


def test_refresh_asks_for_budgeted_keys_with_their_period_starts():
    book = budget_book()
    query = FakeQuery({"a": Decimal("1.50")})
    book.refresh(query, now=datetime(2026, 3, 15, 12, 0, tzinfo=UTC))
    assert query.asked == [{
        "a": datetime(2026, 3, 1, tzinfo=UTC),
        "b": datetime(2026, 3, 8, 12, 0, tzinfo=UTC),
    }]
    assert (book.spend("a"), book.spend("b"), book.spend("c")) == (Decimal("1.50"), Decimal(0), Decimal(0))
    assert book.loaded.is_set()
    assert book.stale is False


def test_spend_arithmetic_queued_written_dropped():
    book = budget_book()
    book.refresh(FakeQuery({"a": Decimal("1.50")}), now=WALL)
    first, second = rec("a", "0.25"), rec("a", "0.10")
    book.queued(*first)
    assert book.spend("a") == Decimal("1.75")
    book.written([first])
    assert book.spend("a") == Decimal("1.75")  # moved from queued to written, counted once
    book.queued(*second)
    assert book.spend("a") == Decimal("1.85")
    book.dropped([(*second, WALL)])
    assert book.spend("a") == Decimal("1.85")  # never stored, but served: still spent
    # The database now holds the written row: refresh replaces, never double-counts,
    # and keeps the row it will never hold.
    book.refresh(FakeQuery({"a": Decimal("1.75")}), now=WALL)
    assert book.spend("a") == Decimal("1.85")
    third = rec("a", "1")
    book.queued(*third)
    book.refresh(FakeQuery({"a": Decimal("2.00")}), now=WALL)  # another proxy spent 0.25
    assert book.spend("a") == Decimal("3.10")  # queued and unstored stay counted across a refresh
    book.written([third])
    assert book.spend("a") == Decimal("3.10")


def test_spend_ignores_unknown_keys_and_free_records():
    book = budget_book()
    book.refresh(FakeQuery({}), now=WALL)
    book.queued(*rec("zzz", "5"))
    book.queued(*rec(None, "5"))
    book.queued(*rec("a", None))
    book.queued(*rec("a", "0"))
    book.written([rec("zzz", "5"), rec("a", None)])
    assert (book.spend("a"), book.spend("zzz")) == (Decimal(0), Decimal(0))


def test_spend_counts_unbudgeted_keys_locally():
    book = budget_book()
    book.refresh(FakeQuery({}), now=WALL)
    book.queued(*rec("c", "2"))
    assert book.spend("c") == Decimal("2")


def test_refresh_without_budgeted_keys_does_not_query():
    book = SpendBook()
    book.use_keys(KeyRing([vkey("c")]))
    query = FakeQuery({"c": Decimal("9")})
    book.refresh(query, now=WALL)
    assert query.asked == []
    assert book.loaded.is_set()
    assert book.spend("c") == Decimal(0)


def test_use_keys_marks_stale():
    book = budget_book()
    book.refresh(FakeQuery({}), now=WALL)
    assert book.stale is False
    book.use_keys(KeyRing([vkey("a", budget=Decimal("1"))]))
    assert book.stale is True
    assert book.spend("a") == Decimal(0)  # still loaded: old numbers until the next refresh
