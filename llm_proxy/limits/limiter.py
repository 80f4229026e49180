"""Per-key limits: rpm, tpm (from real usage), parallel requests and budget.

`admit` is called once per request before anything is sent upstream and
either reserves the request (counted against rpm and parallel) or returns
the 429 to answer, with the headers an SDK uses to back off.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..keys.model import VirtualKey, period_start
from .windows import SlidingWindow


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
    def __init__(self) -> None:
        self._requests: defaultdict[str, SlidingWindow] = defaultdict(SlidingWindow)
        self._tokens: defaultdict[str, SlidingWindow] = defaultdict(SlidingWindow)
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def in_flight(self, name: str) -> int:
        return self._in_flight[name]

    def admit(self, key: VirtualKey, now: float, spend: Decimal | None, wall: datetime) -> Refusal | None:
        """Reserve a request for `key`, or say why not (429)."""
        name = key.name
        if key.parallel is not None and self._in_flight[name] >= key.parallel:
            return Refusal(429, f"key {name!r} already has {key.parallel} requests in flight (its parallel limit)",
                           "parallel_limit_exceeded", _retry_headers(1))
        for limit, window, unit in ((key.rpm, self._requests[name], "requests"),
                                    (key.tpm, self._tokens[name], "tokens")):
            if limit is not None and window.total(now) >= limit:
                wait = window.seconds_until_below(now, limit)
                return Refusal(429, f"key {name!r} is over its limit of {limit} {unit} per minute",
                               "rate_limit_exceeded", {
                                   **_retry_headers(wait),
                                   f"x-ratelimit-limit-{unit}": str(limit),
                                   f"x-ratelimit-remaining-{unit}": "0",
                                   f"x-ratelimit-reset-{unit}": _reset(wait),
                               })
        if key.budget is not None and spend is not None and spend >= key.budget:
            wait = _until_next_period(key.period, wall)
            return Refusal(429, f"key {name!r} has spent ${spend} of its ${key.budget} {key.period} budget",
                           "insufficient_quota", _retry_headers(wait))
        self._requests[name].add(now)
        self._in_flight[name] += 1
        return None

    def release(self, name: str) -> None:
        if self._in_flight[name] > 0:
            self._in_flight[name] -= 1

    def used_tokens(self, name: str, now: float, tokens: int) -> None:
        self._tokens[name].add(now, tokens)


def _until_next_period(period: str, wall: datetime) -> float:
    """Seconds until the budget can recover: the next month, or (rolling windows) a hint of an hour."""
    if period != "monthly":
        return 3600.0
    start = period_start(period, wall)
    next_month = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return (next_month - wall).total_seconds()
