"""A sliding one-minute window of weighted events (requests, or tokens used).

Its memory is bounded whatever the call rate: `add` drops what has left the
span (amortised O(1): each event is removed once), and events closer together
than `resolution` share one entry, so a window never holds more than about
span / resolution entries (601 by default). A shared entry is stamped with
the time of its latest event, so the earlier ones leave the window up to
`resolution` late, never early: a limit is never exceeded because of it.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    __slots__ = ("span", "resolution", "_events", "_total", "_tail_start")

    def __init__(self, span: float = 60.0, resolution: float | None = None) -> None:
        self.span = span
        self.resolution = span / 600 if resolution is None else resolution
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0
        self._tail_start = 0.0  # time of the first event merged into the last entry

    def __len__(self) -> int:
        """Entries held (not events: close events share one)."""
        return len(self._events)

    def _prune(self, now: float) -> None:
        horizon = now - self.span
        events = self._events
        while events and events[0][0] <= horizon:
            self._total -= events.popleft()[1]

    def add(self, now: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        self._prune(now)
        events = self._events
        if events and now - self._tail_start < self.resolution:
            at, merged = events[-1]
            events[-1] = (max(at, now), merged + weight)
        else:
            events.append((now, weight))
            self._tail_start = now
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
