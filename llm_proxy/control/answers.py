"""A short-lived cache of report answers, shared by every viewer of the control plane.

Dashboards refresh on a timer; several open at once would each cost the database a
full set of reports. An identical GET (same path and query text, same caller) within
TTL seconds of a computed answer gets that answer: it is at most TTL (1 s) old, and
its figures are the exact SQL sums at the moment it was computed. Identical requests
arriving while one is being computed wait for that one instead of running again.
A request with `Cache-Control: no-cache` always gets a fresh computation. Lives on
the event loop only (no locks): hooks and awaits run on one thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

TTL = 1.0
MAX_ENTRIES = 256


class AnswerCache:
    def __init__(self, ttl: float = TTL, entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.entries = entries
        self._answers: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._running: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, key: tuple[str, ...], compute: Callable[[], Awaitable[Any]], *, fresh: bool = False) -> Any:
        now = time.monotonic()
        if not fresh:
            found = self._answers.get(key)
            if found is not None and now - found[0] < self.ttl:
                self.hits += 1
                return found[1]
            running = self._running.get(key)
            if running is not None:
                self.hits += 1
                return await asyncio.shield(running)
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            answer = await compute()
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(e)
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            if self._running.get(key) is future:
                del self._running[key]
        future.set_result(answer)
        self._store(key, time.monotonic(), answer)
        return answer

    def _store(self, key: tuple[str, ...], when: float, answer: Any) -> None:
        if len(self._answers) >= self.entries:
            stale = [k for k, (t, _) in self._answers.items() if when - t >= self.ttl]
            for k in stale:
                del self._answers[k]
            if len(self._answers) >= self.entries:
                self._answers.clear()
        self._answers[key] = (when, answer)

    def clear(self) -> None:
        """After a change (keys): the next answers are computed anew."""
        self._answers.clear()
