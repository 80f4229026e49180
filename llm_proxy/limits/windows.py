"""A sliding one-minute window of weighted events (requests, or tokens used)."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.span
        events = self._events
        while events and events[0][0] <= horizon:
            self._total -= events.popleft()[1]

    def add(self, now: float, weight: int = 1) -> None:
        if weight > 0:
            self._events.append((now, weight))
            self._total += weight

    def total(self, now: float) -> int:
        self._prune(now)
        return self._total

    def seconds_until_below(self, now: float, limit: int) -> float:
        """How long until the window's total drops below `limit` (0 if it already is)."""
        self._prune(now)
        if self._total < limit:
            return 0.0
        excess = self._total - limit + 1
        for at, weight in self._events:
            excess -= weight
            if excess <= 0:
                return max(0.0, at + self.span - now)
        return 0.0
