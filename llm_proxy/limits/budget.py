"""Spend per key and budget period, kept current without a database call per request.

spend = what the database held at the last refresh
      + what this proxy wrote since
      + what this proxy has queued but not yet written.

The refresh runs in the writer thread, between batches, so "held at refresh"
and "written since" never overlap. The first refresh happens at start-up (a
restart does not reset budgets); later ones pick up the spend of other
proxies sharing the database, every `interval` seconds.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

from ..keys.model import KeyRing, period_start

SpendQuery = Callable[[Mapping[str, datetime]], Mapping[str, Decimal]]
ZERO = Decimal(0)


class SpendBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at_refresh: dict[str, Decimal] = {}
        self._written: defaultdict[str, Decimal] = defaultdict(Decimal)
        self._queued: defaultdict[str, Decimal] = defaultdict(Decimal)
        self._windows: dict[str, datetime] = {}
        self.keys = KeyRing()
        self.loaded = threading.Event()
        self.stale = True  # the set of budgeted keys changed: refresh at the next chance

    def use_keys(self, keys: KeyRing) -> None:
        self.keys = keys
        self.stale = True

    def spend(self, name: str) -> Decimal | None:
        """Spend of `name` in its current period; None until the first refresh."""
        if not self.loaded.is_set():
            return None
        with self._lock:
            return self._at_refresh.get(name, ZERO) + self._written[name] + self._queued[name]

    # --- event loop side --------------------------------------------------------------

    def queued(self, key_id: str | None, cost: Decimal | None) -> None:
        if cost and key_id in self.keys.by_name:
            with self._lock:
                self._queued[key_id] += cost

    # --- writer thread side (items are (key_id, cost) of rows) --------------------------

    def written(self, items: Iterable[tuple[str | None, Decimal | None]]) -> None:
        """Rows now in the database. Rows replayed from a journal after a restart were
        never queued here, so the queued amount never goes below zero."""
        with self._lock:
            for key_id, cost in items:
                if cost and key_id in self.keys.by_name:
                    self._queued[key_id] = max(ZERO, self._queued[key_id] - cost)
                    self._written[key_id] += cost

    def dropped(self, items: Iterable[tuple[str | None, Decimal | None]]) -> None:
        with self._lock:
            for key_id, cost in items:
                if cost and key_id in self.keys.by_name:
                    self._queued[key_id] = max(ZERO, self._queued[key_id] - cost)

    def refresh(self, query: SpendQuery, now: datetime | None = None) -> None:
        """Re-read every budgeted key's spend from the database (writer thread only)."""
        now = now or datetime.now(UTC)
        windows = {k.name: period_start(k.period, now) for k in self.keys.by_name.values() if k.budget is not None}
        sums = query(windows) if windows else {}
        with self._lock:
            self._windows = windows
            self._at_refresh = dict(sums)
            self._written.clear()
        self.stale = False
        self.loaded.set()
