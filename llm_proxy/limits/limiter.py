"""Per-key limits: rpm, tpm, parallel requests and budget, for one proxy.

`admit` is called once per request before anything is sent upstream and
either reserves the request (counted against rpm and parallel, its estimate
against tpm and the budget: limits/estimate.py) or returns the 429 to answer,
with the headers an SDK uses to back off. `settle` replaces the estimate by the
call's real usage when its row is made (its real cost reaches the SpendBook
through the writer at the same moment).

Memory stays bounded however many calls pass: a key keeps a request window
only while it has an rpm limit and a token window only while it has a tpm
limit (admit sees the key's limits and drops a window the key no longer
needs); each window is bounded by its span (windows.py); an in-flight count
that falls to 0 is removed; and about once a span, windows left empty by
keys that went quiet (or left the key ring) are dropped, unless the key
still has calls in flight whose tokens are yet to be counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..keys.model import VirtualKey, period_start
from .estimate import NOTHING, Estimate
from .windows import SlidingWindow

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    code: str
    headers: dict[str, str] = field(default_factory=dict)


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, round(seconds * 1000)))}


def _reset(seconds: float) -> str:
    return f"{seconds:.3f}s"


class Limiter:
    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self._requests: dict[str, SlidingWindow] = {}  # keys with an rpm limit
        self._tokens: dict[str, SlidingWindow] = {}  # keys with a tpm limit
        self._in_flight: dict[str, int] = {}  # keys with calls in flight (never 0)
        self._reserved_tokens: dict[str, int] = {}  # estimates of calls in flight (never 0)
        self._reserved_cost: dict[str, Decimal] = {}  # cost bounds of calls in flight (never 0)
        self._next_sweep: float | None = None

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def __len__(self) -> int:
        """Entries held for all keys (windows and in-flight counts), for tests and soak checks."""
        return (len(self._requests) + len(self._tokens) + len(self._in_flight) + len(self._reserved_tokens)
                + len(self._reserved_cost))

    def reserved(self, name: str) -> tuple[int, Decimal]:
        """Tokens and cost reserved by `name`'s calls in flight."""
        return self._reserved_tokens.get(name, 0), self._reserved_cost.get(name, ZERO)

    def admit(self, key: VirtualKey, now: float, spend: Decimal | None, wall: datetime,
              estimate: Estimate = NOTHING) -> Refusal | None:
        """Reserve a request (and its estimate) for `key`, or say why not (429; 413 if it can never fit)."""
        if key.tpm is not None and estimate.tokens > key.tpm:
            return too_large(key.name, key.tpm, estimate.tokens)
        if self._next_sweep is None or now >= self._next_sweep:
            self._sweep(now)
        name = key.name
        if key.parallel is not None and self._in_flight.get(name, 0) >= key.parallel:
            return parallel_refusal(name, key.parallel)
        requests = self._window(self._requests, name, key.rpm)
        tokens = self._window(self._tokens, name, key.tpm)
        held_tokens, held_cost = self.reserved(name)
        for limit, window, unit, extra in ((key.rpm, requests, "requests", 1),
                                           (key.tpm, tokens, "tokens", held_tokens + estimate.tokens)):
            # rpm: full at `limit`; tpm: full when what is used, reserved and asked for would pass it
            if limit is not None and window is not None and window.total(now) + max(extra, 1) > limit:
                wait = max(window.seconds_until_below(now, max(1, limit - extra + 1)), 1.0 if extra > 1 else 0.0)
                return rate_refusal(name, limit, unit, wait)
        if key.budget is not None and spend is not None and spend + held_cost >= key.budget:
            return over_budget(key, spend, held_cost, wall)
        if requests is not None:
            requests.add(now)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        if estimate.tokens and key.tpm is not None:
            self._reserved_tokens[name] = held_tokens + estimate.tokens
        if estimate.cost and key.budget is not None:
            self._reserved_cost[name] = held_cost + estimate.cost
        return None

    def settle(self, name: str, estimate: Estimate, now: float, tokens: int | None) -> None:
        """A call admitted with `estimate` ended having used `tokens`: the reservation gives way to them."""
        for held, amount in ((self._reserved_tokens, estimate.tokens), (self._reserved_cost, estimate.cost)):
            if amount and name in held:
                left = held[name] - amount
                if left > 0:
                    held[name] = left  # type: ignore[assignment]
                else:
                    del held[name]
        if tokens:
            self.used_tokens(name, now, tokens)

    def release(self, name: str) -> None:
        count = self._in_flight.get(name, 0)
        if count > 1:
            self._in_flight[name] = count - 1
        elif count:
            del self._in_flight[name]

    def used_tokens(self, name: str, now: float, tokens: int) -> None:
        """Count a finished call's tokens, for a key that had a tpm limit when it was admitted.

        Tokens of a key without one are not kept: nothing would ever read them.
        """
        window = self._tokens.get(name)
        if window is not None:
            window.add(now, tokens)

    def _window(self, windows: dict[str, SlidingWindow], name: str, limit: int | None) -> SlidingWindow | None:
        """The key's window while it has `limit`; dropped when the limit is gone."""
        if limit is None:
            if windows:
                windows.pop(name, None)
            return None
        window = windows.get(name)
        if window is None:
            window = windows[name] = SlidingWindow(self.span)
        return window

    def _sweep(self, now: float) -> None:
        """Forget empty windows of keys with nothing in flight: keys that went quiet or are gone."""
        self._next_sweep = now + self.span
        in_flight = self._in_flight
        for windows in (self._requests, self._tokens):
            idle = [name for name, window in windows.items() if name not in in_flight and not window.total(now)]
            for name in idle:
                del windows[name]


def too_large(name: str, tpm: int, tokens: int) -> Refusal:
    """A call whose own estimate passes the key's tpm: it could never be admitted, so no 429."""
    return Refusal(413, f"this request is estimated at {tokens} tokens (input and max output), more than key "
                        f"{name!r}'s limit of {tpm} tokens per minute; send less or lower max_tokens",
                   "request_too_large")


def over_budget(key: VirtualKey, spend: Decimal, held: Decimal, wall: datetime) -> Refusal:
    wait = _until_next_period(key.period, wall)
    in_flight = f" (and ${held} held by calls in flight)" if held else ""
    return Refusal(429, f"key {key.name!r} has spent ${spend}{in_flight} of its ${key.budget} {key.period} budget",
                   "insufficient_quota", _retry_headers(wait))


def rate_refusal(name: str, limit: int, unit: str, wait: float) -> Refusal:
    return Refusal(429, f"key {name!r} is over its limit of {limit} {unit} per minute", "rate_limit_exceeded", {
        **_retry_headers(wait),
        f"x-ratelimit-limit-{unit}": str(limit),
        f"x-ratelimit-remaining-{unit}": "0",
        f"x-ratelimit-reset-{unit}": _reset(wait),
    })


def parallel_refusal(name: str, parallel: int) -> Refusal:
    return Refusal(429, f"key {name!r} already has {parallel} requests in flight (its parallel limit)",
                   "parallel_limit_exceeded", _retry_headers(1))


def _until_next_period(period: str, wall: datetime) -> float:
    """Seconds until the budget can recover: the next month, or (rolling windows) a hint of an hour."""
    if period != "monthly":
        return 3600.0
    start = period_start(period, wall)
    next_month = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return (next_month - wall).total_seconds()
