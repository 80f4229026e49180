"""Budgets and tpm before the fact: the estimator, the local reservations, and the Lua-backed
shared limits against the machine's real Redis (127.0.0.1:6379, a key prefix of their own,
deleted afterwards)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_proxy.cluster.shared import SharedLimits
from llm_proxy.keys.model import VirtualKey, hash_secret
from llm_proxy.limits.estimate import NOTHING, Estimate, estimate, max_output, nanos
from llm_proxy.limits.gate import TIMEOUT, Gate
from llm_proxy.limits.limiter import Limiter
from llm_proxy.limits.local import LocalLimits
from llm_proxy.usage.model import Usage
from tests.fakes.tcprelay import TcpRelay

WALL = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
REDIS = ("127.0.0.1", 6379)


def vkey(name: str = "k", **kw: Any) -> VirtualKey:
    return VirtualKey(name=name, hash=hash_secret(name), **kw)


class FakeCall:
    """The fields of calls.Call that limits read and write."""

    def __init__(self, key_id: str = "k") -> None:
        self.key_id = key_id
        self.hold: Any = None
        self.holds_key = False
        self.estimate: Estimate | None = None
        self.gate: Gate | None = None


# --- the estimator -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ({"max_tokens": 100}, 100),
    ({"max_completion_tokens": 50, "max_tokens": 70}, 70),
    ({"max_output_tokens": 30}, 30),
    ({"generationConfig": {"maxOutputTokens": 40}}, 40),
    ({"options": {"num_predict": 60}}, 60),
    ({"max_tokens": True}, None),
    ({"max_tokens": -5}, None),
    ({"max_tokens": "100"}, None),
    ({"max_tokens": 10**12}, 10_000_000),
    ({"generationConfig": "x", "options": [1]}, None),
    ([1, 2], None),
    (None, None),
])
def test_max_output_reads_every_spelling_and_trusts_no_odd_value(body: Any, expected: int | None) -> None:
    assert max_output(body) == expected


def test_estimate_tokens_and_an_upper_bound_of_cost() -> None:
    seen: list[tuple[str, str | None, Usage]] = []

    def price(provider: str, model: str | None, usage: Usage) -> Decimal:
        seen.append((provider, model, usage))
        return Decimal(usage.input_tokens or 0) * Decimal("0.00001") + Decimal(usage.output_tokens or 0) * Decimal("0.0001")

    e = estimate(401, 5, "openai", "m", price)
    assert e.tokens == 101 + 5  # ceil(401 / 4) + max output
    assert e.cost == Decimal("0.00401") + Decimal("0.0005")  # every body byte a token: the bound
    assert seen[-1][:2] == ("openai", "m")
    no_max = estimate(400, None, "openai", "m", price, output_bound=1000)
    assert no_max.tokens == 100  # tpm: output is counted when it is known
    assert no_max.cost == Decimal("0.004") + Decimal("0.1")  # budget: the documented bound
    assert estimate(400, None, "openai", "m", lambda *a: None).cost == 0  # unpriced: nothing to reserve
    assert estimate(400, 5, "openai", "m", price, priced=False).cost == 0
    assert len(seen) == 2


def test_nanos_round_towards_spend() -> None:
    assert nanos(Decimal("0.00075")) == 750_000
    assert nanos(Decimal("0.0000000001")) == 1
    assert nanos(Decimal(0)) == 0


# --- local reservations ------------------------------------------------------------------------

def test_local_budget_probe_overshoots_by_less_than_one_call() -> None:
    """The issue's probe on one proxy: 20 concurrent $0.00075 calls against a $0.001 budget."""
    for bound in (Decimal("0.00075"), Decimal("0.0009"), Decimal("0.003")):
        lim, key = Limiter(), vkey(budget=Decimal("0.001"))
        admitted = sum(lim.admit(key, 0.0, Decimal(0), WALL, Estimate(0, bound)) is None for _ in range(20))
        spent = admitted * Decimal("0.00075")
        assert 1 <= admitted and spent < Decimal("0.001") + Decimal("0.00075")
    # Without reservations (the old behaviour) all 20 got through: the estimate is what holds.
    lim = Limiter()
    assert sum(lim.admit(key, 0.0, Decimal(0), WALL) is None for _ in range(20)) == 20


def test_local_settle_gives_the_reservation_back() -> None:
    lim, key = Limiter(), vkey(budget=Decimal("0.001"), tpm=300)
    est = Estimate(200, Decimal("0.002"))
    assert lim.admit(key, 0.0, Decimal(0), WALL, est) is None
    refused = lim.admit(key, 0.0, Decimal(0), WALL, est)
    assert refused is not None and refused.code == "rate_limit_exceeded"  # 200 held + 200 asked > 300
    assert lim.reserved("k") == (200, Decimal("0.002"))
    lim.release("k")
    lim.settle("k", est, 1.0, 18)
    assert lim.reserved("k") == (0, Decimal(0))
    assert len(lim) == 1  # only the token window is left
    refused = lim.admit(key, 2.0, Decimal("0.0011"), WALL, est)  # now the real spend is over the budget
    assert refused is not None and refused.code == "insufficient_quota"


def test_local_tpm_refuses_a_call_that_can_never_fit() -> None:
    lim = Limiter()
    refused = lim.admit(vkey(tpm=100), 0.0, None, WALL, Estimate(101, Decimal(0)))
    assert refused is not None and (refused.status, refused.code) == (413, "request_too_large")
    assert lim.admit(vkey(tpm=100), 0.0, None, WALL, Estimate(100, Decimal(0))) is None


def test_local_limits_interface_keeps_call_state() -> None:
    limits = LocalLimits(Limiter())
    call, key = FakeCall(), vkey(parallel=1, tpm=100)
    assert asyncio.run(limits.admit_key(key, call, Estimate(40), None, WALL)) is None
    assert call.holds_key and call.estimate == Estimate(40)
    limits.release(call)
    limits.settle(call, 7)
    assert not call.holds_key and call.estimate is None
    assert limits.limiter.reserved("k") == (0, Decimal(0)) and limits.limiter.in_flight("k") == 0


# --- shared limits on the real Redis -------------------------------------------------------------

@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"llmp-unit-{secrets.token_hex(4)}:"
    yield name
    client = redis.Redis(*REDIS)
    keys = list(client.scan_iter(match=name + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def shared(prefix: str, port: int = REDIS[1], **kw: Any) -> SharedLimits:
    pool = aioredis.BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{port}/0", max_connections=16, timeout=None, socket_timeout=1,
        socket_connect_timeout=1, retry=Retry(NoBackoff(), 0), decode_responses=True)
    return SharedLimits(aioredis.Redis(connection_pool=pool), LocalLimits(Limiter()), prefix=prefix, **kw)


def test_shared_rpm_admits_exactly_the_limit_under_concurrency(prefix: str) -> None:
    async def run() -> int:
        limits = shared(prefix)
        key = vkey(rpm=30)
        results = await asyncio.gather(*(limits.admit_key(key, FakeCall(), NOTHING, None, WALL)
                                         for _ in range(100)))
        refused = [r for r in results if r is not None]
        assert {r.code for r in refused} == {"rate_limit_exceeded"}
        assert refused[0].headers["x-ratelimit-limit-requests"] == "30"
        assert limits.up
        return results.count(None)

    assert asyncio.run(run()) == 30


def test_shared_parallel_slots_come_back_on_release(prefix: str) -> None:
    async def run() -> None:
        limits = shared(prefix)
        key = vkey(parallel=2)
        calls = [FakeCall() for _ in range(3)]
        results = [await limits.admit_key(key, c, NOTHING, None, WALL) for c in calls]
        assert results[:2] == [None, None] and results[2].code == "parallel_limit_exceeded"
        limits.release(calls[0])
        limits.settle(calls[0], None, None)
        await asyncio.sleep(0.05)  # the END script runs as a task
        assert await limits.admit_key(key, FakeCall(), NOTHING, None, WALL) is None

    asyncio.run(run())


def test_shared_tpm_reserves_the_estimate_and_settles_real_usage(prefix: str) -> None:
    async def run() -> None:
        limits = shared(prefix)
        key = vkey(tpm=400)
        first, second = FakeCall(), FakeCall()
        assert await limits.admit_key(key, first, Estimate(180), None, WALL) is None
        assert await limits.admit_key(key, second, Estimate(180), None, WALL) is None
        third = await limits.admit_key(key, FakeCall(), Estimate(180), None, WALL)
        assert third is not None and third.code == "rate_limit_exceeded"  # 360 held + 180 > 400
        too_big = await limits.admit_key(key, FakeCall(), Estimate(401), None, WALL)
        assert too_big is not None and too_big.status == 413
        for call in (first, second):
            limits.release(call)
            limits.settle(call, 18, None)
        await asyncio.sleep(0.05)
        client = limits.client
        assert sum(map(int, (await client.hgetall(f"{prefix}key:k:tpm")).values())) == 36
        assert await limits.admit_key(key, FakeCall(), Estimate(180), None, WALL) is None

    asyncio.run(run())


def test_shared_budget_reserves_settles_and_takes_the_database_as_a_floor(prefix: str) -> None:
    async def run() -> None:
        limits = shared(prefix)
        key = vkey(budget=Decimal("0.001"))
        wall = datetime.now(UTC)
        est = Estimate(0, Decimal("0.001"))  # the bound of a call (its real cost will be $0.00075)
        first = FakeCall()
        assert await limits.admit_key(key, first, est, Decimal(0), wall) is None
        second = await limits.admit_key(key, FakeCall(), est, Decimal(0), wall)
        assert second is not None and second.code == "insufficient_quota" and "held by calls in flight" in second.message
        limits.release(first)
        limits.settle(first, 10, Decimal("0.00075"))
        await asyncio.sleep(0.05)
        assert await limits.client.hvals(f"{prefix}key:k:spend") == ["750000"]
        assert await limits.client.hlen(f"{prefix}key:k:resamt") == 0
        # $0.00075 spent: one more call may start (less than the budget is spent)...
        assert await limits.admit_key(key, FakeCall(), est, Decimal(0), wall) is None
        # ... but not on a key whose database spend (the floor) is already at the budget.
        other = vkey("db-spent", budget=Decimal("0.001"))
        refused = await limits.admit_key(other, FakeCall("db-spent"), est, Decimal("0.001"), wall)
        assert refused is not None and refused.code == "insufficient_quota"

    asyncio.run(run())


def test_shared_leases_free_the_slots_of_a_proxy_that_died(prefix: str) -> None:
    async def run() -> None:
        dead = shared(prefix, lease_ms=300)  # admits, then never releases nor renews
        key = vkey(parallel=1, budget=Decimal("1"))
        assert await dead.admit_key(key, FakeCall(), Estimate(0, Decimal("0.9")), Decimal(0), WALL) is None
        alive = shared(prefix, lease_ms=300)
        assert (await alive.admit_key(key, FakeCall(), NOTHING, Decimal(0), WALL)).code == "parallel_limit_exceeded"
        await asyncio.sleep(0.4)
        assert await alive.admit_key(key, FakeCall(), Estimate(0, Decimal("0.9")), Decimal(0), WALL) is None
        # A live holder renews: its slot outlasts the lease.
        held = FakeCall()
        renewing = shared(prefix, lease_ms=300)
        other = vkey("renewed", parallel=1)
        assert await renewing.admit_key(other, held, NOTHING, None, WALL) is None
        for _ in range(4):
            await asyncio.sleep(0.15)
            await renewing._renew_all()
        assert (await alive.admit_key(other, FakeCall("renewed"), NOTHING, None, WALL)).code == \
            "parallel_limit_exceeded"

    asyncio.run(run())


def test_shared_gate_holds_the_global_limit_and_times_out(prefix: str) -> None:
    async def run() -> None:
        a, b = shared(prefix), shared(prefix)  # two proxies
        gate = Gate(limit=2, max_waiting=10, timeout=0.3)
        calls = [FakeCall() for _ in range(3)]
        assert await a.enter_gate(gate, calls[0]) is None
        assert await b.enter_gate(gate, calls[1]) is None
        assert await a.enter_gate(gate, calls[2]) == TIMEOUT
        waiting = asyncio.create_task(b.enter_gate(Gate(limit=2, max_waiting=10, timeout=2), FakeCall()))
        await asyncio.sleep(0.1)
        a.release(calls[0])
        assert await waiting is None  # the freed slot went to a waiter on the other proxy

    asyncio.run(run())


def test_redis_cut_falls_back_without_hanging_and_comes_back(prefix: str) -> None:
    async def run() -> None:
        with TcpRelay(*REDIS).start() as relay:
            limits = shared(prefix, port=relay.port)
            limits.start()
            rated, budgeted = vkey(rpm=5), vkey("b", budget=Decimal(1))
            assert await limits.admit_key(rated, FakeCall(), NOTHING, None, WALL) is None
            relay.cut()
            started = time.monotonic()
            assert await limits.admit_key(rated, FakeCall(), NOTHING, None, WALL) is None  # counted here alone
            refused = await limits.admit_key(budgeted, FakeCall("b"), NOTHING, Decimal(0), WALL)
            assert refused is not None and (refused.status, refused.code) == (503, "budget_unavailable")
            assert time.monotonic() - started < 1.0
            assert limits.state()["state"] == "down" and limits.state()["last_error"]
            relay.restore()
            deadline = time.monotonic() + 3
            while not limits.up:
                assert time.monotonic() < deadline, "Redis was not found again"
                await asyncio.sleep(0.05)
            assert await limits.admit_key(budgeted, FakeCall("b"), NOTHING, Decimal(0), WALL) is None
            limits.stop()

    asyncio.run(run())
