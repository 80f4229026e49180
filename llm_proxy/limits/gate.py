"""The global concurrency gate: at most N calls upstream, the rest wait in a fair queue.

Waiting happens in the async request hook, so only the waiting flow pauses.
Slots are handed to waiters in arrival order (FIFO) when a call finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

FULL = "full"
TIMEOUT = "timeout"


class Gate:
    def __init__(self, limit: int, max_waiting: int, timeout: float) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> str | None:
        """Take a slot (None), or give up: FULL queue (503) or TIMEOUT (429)."""
        if self.active < self.limit and not self.waiting:
            self.active += 1
            return None
        if self.waiting >= self.max_waiting:
            return FULL
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(ticket)
        try:
            await asyncio.wait_for(ticket, self.timeout)
        except asyncio.CancelledError:
            # The waiting hook was cancelled: leave no ticket behind (it would count as waiting
            # until a slot came free), and hand on a slot that arrived as it was cancelled.
            if ticket.done() and not ticket.cancelled():
                self.leave()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(ticket)
            raise
        except TimeoutError:
            if ticket.done() and not ticket.cancelled():
                return None  # the slot arrived as the timer fired: keep it
            with contextlib.suppress(ValueError):
                self._waiters.remove(ticket)
            return TIMEOUT
        return None  # leave() handed its slot over; `active` is unchanged

    def leave(self) -> None:
        while self._waiters:
            ticket = self._waiters.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return
        self.active = max(0, self.active - 1)
