"""Limits shared by every proxy using one Redis (llm_redis): the Limits interface over Lua scripts.

Each admission is one script run (scripts.py): parallel, rpm, tpm and budget are
checked and counted in one atomic step on the Redis server, so N proxies admit
exactly what one would. Everything is awaited on redis-py's asyncio client with
short timeouts; giving slots back and settling run as background tasks, never
in a hook.

While Redis is unreachable (a call failed or timed out within TIMEOUT seconds):
- rpm, tpm, parallel and llm_max_concurrent are counted by each proxy alone
  (LocalLimits, from zero), so the cluster admits up to N times a rate limit;
- keys with a budget are refused (503 budget_unavailable): spend across proxies
  cannot be known, and money is not risked;
- calls do not wait for Redis: after a failure it is not asked again until a
  background ping (every PROBE_EVERY seconds) finds it back;
- /_llm/health says "degraded" with the reason.
Slots and reservations a proxy held when Redis went away expire with their lease
(LEASE seconds); costs that could not be settled in Redis are still in the
database, whose spend each proxy passes in as a floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from ..keys.model import VirtualKey, period_start
from ..limits.estimate import Estimate, nanos
from ..limits.gate import FULL, TIMEOUT, Gate
from ..limits.limiter import Refusal, over_budget, parallel_refusal, rate_refusal, too_large
from ..limits.local import LocalLimits
from . import scripts

if TYPE_CHECKING:
    from ..calls import Call

logger = logging.getLogger(__name__)

TIMEOUT_S = 2.0  # longest a call waits on one Redis round trip (or for a pooled connection)
CONNECT_TIMEOUT_S = 1.0  # a refused or reset connection fails at once; this bounds a silent one
CONNECTIONS = 32  # connections per proxy; more concurrent calls queue for one (within TIMEOUT_S)
LEASE_MS = 30_000  # a slot or reservation not renewed for this long is free again
RENEW_EVERY = LEASE_MS / 3000  # seconds
PROBE_EVERY = 0.5  # seconds between pings while Redis is down
SPEND_TTL = 32 * 86400  # hour buckets of spend are kept a little longer than the longest period
GATE_POLL = (0.01, 0.1)  # first and longest pause between tries for a global slot
WHEN_DOWN = ("rpm, tpm, parallel and llm_max_concurrent are counted by each proxy alone; "
             "keys with a budget are refused (503) until Redis is back")


class Unavailable(Exception):
    """Redis cannot be reached (a refused or broken connection): the WHEN_DOWN rules apply."""


class Slow(Unavailable):
    """Redis did not answer within TIMEOUT_S: this call cannot be decided (a busy machine, or Redis
    going away silently); a ping decides whether Redis is down."""


@dataclass(slots=True, eq=False)
class Hold:
    """What one call holds in Redis, to renew while it runs and give back when it ends."""

    id: str
    key: str | None = None
    estimate: Estimate | None = None
    admit_second: str = ""
    flight: bool = False  # a parallel slot
    reserved: bool = False  # a budget reservation
    gate: bool = False  # a global (llm_max_concurrent) slot
    released: bool = False
    settled: bool = False
    pending: list[tuple[bool, bool, int, Decimal | None]] = field(default_factory=list)


class SharedLimits:
    def __init__(self, client: aioredis.Redis, local: LocalLimits, *, prefix: str = "llm-proxy:",
                 lease_ms: int = LEASE_MS, timeout: float = TIMEOUT_S) -> None:
        self.client = client
        self.local = local
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.timeout = timeout
        self.up = True
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._admit = client.register_script(scripts.ADMIT)
        self._gate = client.register_script(scripts.GATE)
        self._end = client.register_script(scripts.END)
        self._renew = client.register_script(scripts.RENEW)
        self._live: dict[str, Hold] = {}
        self._waiting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None

    # --- Redis round trips --------------------------------------------------------------

    def _keys(self, name: str) -> dict[str, str]:
        base = f"{self.prefix}key:{name}:"
        return {part: base + part for part in ("flight", "rpm", "tpm", "res", "resamt", "spend")}

    @property
    def gate_key(self) -> str:
        return f"{self.prefix}gate"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if not self.up:
            raise Unavailable
        try:
            return await asyncio.wait_for(script(keys=keys, args=args), self.timeout)
        except (TimeoutError, RedisTimeout):
            self._check_soon()
            raise Slow from None
        except (RedisError, OSError) as e:
            self._went_down(e)
            raise Unavailable from None

    def _check_soon(self) -> None:
        """After a timeout: ping now, and call Redis down only if that fails too."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout)
        except (TimeoutError, RedisError, OSError) as e:
            self._went_down(e)

    def _went_down(self, error: BaseException) -> None:
        if self.up:
            logger.error("llm-proxy lost Redis (%s: %s): %s", type(error).__name__, str(error)[:200], WHEN_DOWN)
            self.down_since = time.time()
        self.up = False
        self.last_error = type(error).__name__

    # --- the Limits interface -----------------------------------------------------------

    async def admit_key(self, key: VirtualKey, call: Call, estimate: Estimate, spend: Decimal | None,
                        wall: datetime) -> Refusal | None:
        if key.tpm is not None and estimate.tokens > key.tpm:
            return too_large(key.name, key.tpm, estimate.tokens)
        if not (key.parallel or key.rpm or key.tpm or key.budget is not None):
            return self.local.admit_now(key, call, estimate, spend, wall)  # nothing to share
        hold = Hold(id=_hold_id(call), key=key.name, estimate=estimate)
        keys = self._keys(key.name)
        budget = -1 if key.budget is None else int(key.budget * 1_000_000_000)
        start_hour = int(period_start(key.period, wall).astimezone(UTC).timestamp() // 3600)
        try:
            result = await self._run(self._admit, list(keys.values()), [
                hold.id, self.lease_ms, key.parallel or 0, key.rpm or 0, key.tpm or 0, estimate.tokens, budget,
                nanos(estimate.cost), nanos(spend or Decimal(0)), start_hour])
        except Slow:
            # It may have been counted: give back any slot or reservation it may hold (rpm stays counted).
            hold.flight, hold.reserved, hold.settled = bool(key.parallel), key.budget is not None, True
            self._queue(hold, release=True, settle=True)
            return Refusal(503, "llm-proxy's shared limits (Redis) did not answer in time; try again shortly",
                           "limits_unavailable", {"retry-after": "1"})
        except Unavailable:
            return self._admit_alone(key, call, estimate, spend, wall)
        code = int(result[0])
        if code == 1:
            return parallel_refusal(key.name, key.parallel or 0)
        if code == 2:
            return rate_refusal(key.name, key.rpm or 0, "requests", int(result[1]) / 1000)
        if code == 3:
            return rate_refusal(key.name, key.tpm or 0, "tokens", int(result[1]) / 1000)
        if code == 4:
            return over_budget(key, _usd(int(result[1])), _usd(int(result[2])), wall)
        hold.admit_second = str(result[1])
        hold.flight = bool(key.parallel)
        hold.reserved = key.budget is not None and nanos(estimate.cost) > 0
        call.hold = hold
        self._live[hold.id] = hold
        return None

    def _admit_alone(self, key: VirtualKey, call: Call, estimate: Estimate, spend: Decimal | None,
                     wall: datetime) -> Refusal | None:
        if key.budget is not None:
            return Refusal(503, "budget state unavailable (llm-proxy cannot reach Redis); try again shortly",
                           "budget_unavailable", {"retry-after": "5"})
        return self.local.admit_now(key, call, estimate, spend, wall)

    async def enter_gate(self, gate: Gate, call: Call) -> str | None:
        if not self.up:
            return await self.local.enter_gate(gate, call)
        hold = call.hold if isinstance(call.hold, Hold) else Hold(id=_hold_id(call))
        deadline = time.monotonic() + gate.timeout
        pause = GATE_POLL[0]
        waiting = False
        try:
            while True:
                try:
                    got = await self._run(self._gate, [self.gate_key], [hold.id, self.lease_ms, gate.limit])
                except Slow:
                    # Undecided: try again with the same id (the script keeps a slot the id holds);
                    # if it gives up, the call's release frees a slot it may have taken.
                    hold.gate, call.hold = True, hold
                    self._live[hold.id] = hold
                    got = 0
                except Unavailable:
                    return await self.local.enter_gate(gate, call)
                if got:
                    hold.gate = True
                    hold.released = False  # a slot taken after the call's end is released by Access at once
                    call.hold = hold
                    self._live[hold.id] = hold
                    return None
                if not waiting:
                    if self._waiting >= gate.max_waiting:
                        return FULL
                    waiting = True
                    self._waiting += 1
                if time.monotonic() + pause > deadline:
                    return TIMEOUT
                await asyncio.sleep(pause)
                pause = min(pause * 2, GATE_POLL[1])
        finally:
            if waiting:
                self._waiting -= 1

    def release(self, call: Call) -> None:
        hold = call.hold
        if isinstance(hold, Hold) and not hold.released and (hold.flight or hold.gate):
            hold.released = True
            self._queue(hold, release=True)
        self.local.release(call)

    def settle(self, call: Call, tokens: int | None, cost: Decimal | None = None) -> None:
        hold = call.hold
        if isinstance(hold, Hold) and hold.key is not None:
            if not hold.settled:
                hold.settled = True
                self._queue(hold, settle=True, tokens=tokens or 0, cost=cost)
            return
        if isinstance(hold, Hold):  # a global slot only: its key (if any) was counted here alone
            hold.settled = True
            if hold.released or not hold.gate:
                self._live.pop(hold.id, None)
        self.local.settle(call, tokens, cost)

    def state(self) -> dict[str, Any]:
        return {
            "state": "up" if self.up else "down",
            "since": None if self.down_since is None else datetime.fromtimestamp(self.down_since, UTC).isoformat(),
            "last_error": self.last_error,
            "when_down": WHEN_DOWN,
            "held": len(self._live),  # calls of this proxy holding slots or reservations in Redis
            "waiting": self._waiting,  # calls of this proxy waiting for a global slot
        }

    # --- background: giving back, renewing, probing -----------------------------------

    def _queue(self, hold: Hold, *, release: bool = False, settle: bool = False, tokens: int = 0,
               cost: Decimal | None = None) -> None:
        """Run the END script soon (as a task): a release and a settle of one event-loop step share it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # shutting down without a loop: the leases expire on their own
        first = not hold.pending
        hold.pending.append((release, settle, tokens, cost))
        if first:
            task = loop.create_task(self._flush(hold))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, hold: Hold) -> None:
        await asyncio.sleep(0)  # let a settle of the same step join the release
        pending, hold.pending = hold.pending, []
        release = any(p[0] for p in pending)
        settle = [p for p in pending if p[1]]
        tokens = sum(p[2] for p in settle)
        cost = sum((p[3] for p in settle if p[3]), Decimal(0))
        if hold.settled and (hold.released or not (hold.flight or hold.gate)):
            self._live.pop(hold.id, None)  # nothing left to renew
        keys = self._keys(hold.key or "-")
        estimate = hold.estimate or Estimate()
        with contextlib.suppress(Unavailable):
            await self._run(self._end, [keys["flight"], self.gate_key, keys["tpm"], keys["res"], keys["resamt"],
                                        keys["spend"]], [
                hold.id, int(release), int(bool(settle)), hold.admit_second, estimate.tokens, tokens, nanos(cost),
                SPEND_TTL])

    def start(self) -> None:
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._maintain())

    async def _load_scripts(self) -> None:
        """Load the scripts once up front, so a burst of first calls does not all meet NOSCRIPT."""
        for script in (self._admit, self._gate, self._end, self._renew):
            await asyncio.wait_for(self.client.script_load(script.script), self.timeout)

    def stop(self) -> None:
        if self._background is not None:
            self._background.cancel()
            self._background = None

    async def _maintain(self) -> None:
        """Renew the leases of calls in flight; while Redis is down, ping until it is back."""
        renewed = time.monotonic()
        with contextlib.suppress(Exception):
            await self._load_scripts()
        while True:
            await asyncio.sleep(PROBE_EVERY)
            with contextlib.suppress(Exception):
                if not self.up:
                    await self._probe()
                elif time.monotonic() - renewed >= RENEW_EVERY:
                    renewed = time.monotonic()
                    await self._renew_all()

    async def _probe(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout)
            await self._load_scripts()  # a restarted Redis has forgotten them
        except (RedisError, OSError, TimeoutError) as e:
            self.last_error = type(e).__name__
            return
        logger.info("llm-proxy reaches Redis again: limits are shared again")
        self.up, self.down_since, self.last_error = True, None, None

    async def _renew_all(self) -> None:
        keys: list[str] = []
        members: list[str] = []
        for hold in list(self._live.values()):
            parts = self._keys(hold.key or "-")
            if hold.flight and not hold.released:
                keys.append(parts["flight"]), members.append(hold.id)
            if hold.gate and not hold.released:
                keys.append(self.gate_key), members.append(hold.id)
            if hold.reserved and not hold.settled:
                keys += [parts["res"], parts["resamt"]]
                members += [hold.id, ""]
        for start in range(0, len(keys), 500):
            await self._run(self._renew, keys[start:start + 500], [self.lease_ms, *members[start:start + 500]])


def _hold_id(call: Call) -> str:
    """Unique across proxies: members of shared sets."""
    return secrets.token_hex(8)


def _usd(nano: int) -> Decimal:
    return (Decimal(nano) / 1_000_000_000).normalize()
