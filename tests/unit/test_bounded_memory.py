"""Nothing the proxy keeps per key, per target or per lookup grows with the number of calls.

Issue 8 item 17: a soak of 117,000 calls grew the proxy by about 280 bytes a
call, in SlidingWindow (every request and token count of a key without limits
was kept forever). These tests drive each structure far past any real key
count or rate, on a fake clock, and bound what it holds.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from datetime import UTC, datetime

from llm_proxy.config.memo import Memo
from llm_proxy.config.models import Target
from llm_proxy.keys.model import VirtualKey, hash_secret
from llm_proxy.limits.gate import Gate
from llm_proxy.limits.limiter import Limiter
from llm_proxy.limits.windows import SlidingWindow
from llm_proxy.rescue.breaker import OPEN, Breakers

WALL = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def vkey(name: str, **kw) -> VirtualKey:
    return VirtualKey(name=name, hash=hash_secret(name), **kw)


def held(lim: Limiter) -> int:
    """Entries the limiter holds for all keys: windows and in-flight counts."""
    return len(lim._requests) + len(lim._tokens) + len(lim._in_flight)


# --- SlidingWindow ---------------------------------------------------------------------------------

def test_window_that_is_only_added_to_stays_within_its_span():
    # A key without limits: nothing ever asks for the total, so only add can prune.
    w = SlidingWindow()
    for i in range(100_000):
        w.add(i * 0.01)  # 100 events a second for 1,000 s
    assert len(w._events) <= 601  # span / resolution + 1, not 100,000
    # It still counts every event of the last minute, plus at most one resolution's worth
    # (0.1 s, 10 events here) that shares an entry with a later event and so leaves late.
    assert 6000 <= w.total(999.99) <= 6010


def test_window_entries_are_bounded_whatever_the_rate():
    w = SlidingWindow()
    for i in range(100_000):
        w.add(i * 0.0001, 3)  # 10,000 events a second
    assert len(w._events) <= 601
    assert w.total(9.9999) == 300_000


def test_sparse_events_are_kept_one_by_one():
    w = SlidingWindow()
    for i in range(50):
        w.add(float(i))
    assert len(w._events) == 50 and w.total(49.0) == 50


# --- Limiter ---------------------------------------------------------------------------------------

def _cycles(lim: Limiter, keys: list[VirtualKey], n: int, start: float, step: float) -> float:
    now = start
    for i in range(n):
        key = keys[i % len(keys)]
        assert lim.admit(key, now, None, WALL) is None
        lim.release(key.name)
        lim.used_tokens(key.name, now, 120)
        now += step
    return now


def test_limiter_allocates_next_to_nothing_over_50000_calls():
    keys = [vkey("free"), vkey("open"), vkey("rpm", rpm=10**9), vkey("tpm", tpm=10**12), vkey("par", parallel=4)]
    lim = Limiter()
    now = _cycles(lim, keys, 20_000, 0.0, 0.005)  # 100 s: every window at its steady state
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _cycles(lim, keys, 50_000, now, 0.005)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Before the fix the two keys without limits kept every event: about 4 MB here.
    assert grown < 64 * 1024, f"the limiter grew by {grown} bytes over 50,000 calls"


def test_keys_without_rpm_or_tpm_keep_no_window():
    lim = Limiter()
    for i in range(1000):
        key = vkey("free", parallel=10) if i % 2 else vkey("open")
        assert lim.admit(key, float(i), None, WALL) is None
        lim.release(key.name)
        lim.used_tokens(key.name, float(i), 500)
    assert held(lim) == 0


def test_in_flight_lookup_of_unknown_names_inserts_nothing():
    lim = Limiter()
    assert all(lim.in_flight(f"nobody-{i}") == 0 for i in range(10_000))
    lim.release("nobody")
    assert held(lim) == 0


def test_in_flight_count_is_removed_when_it_falls_to_zero():
    lim, key = Limiter(), vkey("k", parallel=3)
    for _ in range(3):
        assert lim.admit(key, 0.0, None, WALL) is None
    for _ in range(3):
        lim.release("k")
    assert lim.in_flight("k") == 0 and held(lim) == 0


def test_window_is_dropped_when_the_key_loses_its_limit():
    lim = Limiter()
    assert lim.admit(vkey("k", rpm=100, tpm=10_000), 0.0, None, WALL) is None
    lim.release("k")
    lim.used_tokens("k", 0.0, 50)
    assert held(lim) == 2
    assert lim.admit(vkey("k"), 1.0, None, WALL) is None  # keys.toml reloaded: limits removed
    lim.release("k")
    assert held(lim) == 0


def test_windows_of_keys_that_went_quiet_or_vanished_are_swept():
    lim = Limiter()
    for i in range(1000):  # keys created, used once, then deleted from keys.toml
        name = f"temp-{i}"
        assert lim.admit(vkey(name, rpm=5, tpm=1000), i * 0.01, None, WALL) is None
        lim.release(name)
        lim.used_tokens(name, i * 0.01, 10)
    assert held(lim) == 2000
    assert lim.admit(vkey("survivor", rpm=5), 200.0, None, WALL) is None  # the next sweep
    assert held(lim) == 2  # survivor's request window and in-flight count


def test_sweep_keeps_the_token_window_of_a_key_with_calls_in_flight():
    lim = Limiter()
    slow = vkey("slow", tpm=100)
    assert lim.admit(slow, 0.0, None, WALL) is None  # a call that will take 90 s
    assert lim.admit(vkey("other"), 100.0, None, WALL) is None  # sweeps
    lim.release("slow")
    lim.used_tokens("slow", 100.0, 100)  # counted: its window was kept for it
    assert lim.admit(slow, 101.0, None, WALL).code == "rate_limit_exceeded"


# --- circuit breakers ------------------------------------------------------------------------------

def test_breakers_of_client_invented_models_are_bounded():
    breakers = Breakers(failures=5, cooldown=30)  # at most 1,000 targets by default
    for i in range(100_000):  # a glob route: the model is whatever the client sends
        breakers.failure(Target("openai", f"gpt-4o-{i}"), i * 0.001)
    assert len(breakers._states) <= 1000


def test_full_table_of_open_breakers_stays_full_and_keeps_them_open():
    breakers = Breakers(failures=1, cooldown=1000)
    breakers.max_targets = 10
    for i in range(10):
        breakers.failure(Target("p", f"m{i}"), 0.0, connection=True)
    breakers.failure(Target("p", "late"), 1.0)
    assert len(breakers._states) == 10
    assert breakers.state(Target("p", "m3"), 2.0) == OPEN  # none of the open ones was dropped


def test_breaker_that_recovers_leaves_no_entry():
    breakers, t = Breakers(failures=5, cooldown=10), Target("openai", "gpt-4o")
    for i in range(3):
        breakers.failure(t, float(i))
    breakers.success(t)
    assert len(breakers._states) == 0


def test_breaker_keeps_at_most_a_bounded_model_name():
    breakers = Breakers(failures=1, cooldown=10)
    long_model = "m" * 1_000_000
    breakers.failure(Target("openai", long_model), 0.0)
    assert breakers.state(Target("openai", long_model), 1.0) == OPEN  # still works for that target
    (kept,) = breakers._states
    assert len(kept.model) <= 256


# --- Memo ------------------------------------------------------------------------------------------

def test_memo_does_not_keep_huge_keys():
    memo: Memo[str, int] = Memo(len, limit=10_000)
    for i in range(100):
        assert memo(f"{i}-" + "x" * 100_000) == 100_000 + len(f"{i}-")
    assert len(memo) == 0
    assert memo(("route", "/v1/chat/completions")) and len(memo) == 1


# --- Gate ------------------------------------------------------------------------------------------

def test_gate_forgets_waiters_that_were_cancelled():
    async def scenario() -> tuple[int, str | None]:
        gate = Gate(limit=1, max_waiting=5, timeout=30)
        assert await gate.enter() is None
        waiters = [asyncio.create_task(gate.enter()) for _ in range(5)]
        await asyncio.sleep(0)
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        waiting = gate.waiting
        late = asyncio.create_task(gate.enter())  # not refused as "queue full" by the dead tickets
        await asyncio.sleep(0)
        gate.leave()
        return waiting, await late

    assert asyncio.run(scenario()) == (0, None)


def test_gate_hands_on_a_slot_that_arrived_as_its_waiter_was_cancelled():
    async def scenario() -> tuple[int, int]:
        gate = Gate(limit=1, max_waiting=5, timeout=30)
        assert await gate.enter() is None
        waiter = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.leave()  # hands the slot to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs again
        await asyncio.gather(waiter, return_exceptions=True)
        return gate.active, gate.waiting

    assert asyncio.run(scenario()) == (0, 0)
