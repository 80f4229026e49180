"""Spend per key and budget period, kept current without a database call per request.

spend = what the database held at the last refresh
      + what this proxy wrote since
      + what this proxy has queued but not yet written
      + what this proxy could not store (a row the database refused, one dropped
        because memory or the journal was full) in the key's current period.

The refresh runs in the writer thread, between batches, so "held at refresh"
and "written since" never overlap. A call the provider served is spend
whether or not its row was stored: rows that never reach the database are
kept apart, survive every refresh (the database cannot count them) and fall
out only when their key's period rolls over. The first refresh happens at start-up (a
restart does not reset budgets); later ones pick up the spend of other
proxies sharing the database, every `interval` seconds.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ..keys.model import KeyRing, period_start

SpendQuery = Callable[[Mapping[str, datetime]], Mapping[str, Decimal]]
ZERO = Decimal(0)
_MINUTE = timedelta(minutes=1)


class SpendBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at_refresh: dict[str, Decimal] = {}
        self._written: defaultdict[str, Decimal] = defaultdict(Decimal)
        self._queued: defaultdict[str, Decimal] = defaultdict(Decimal)
        # Per key, per minute of the rows' ts: bounded however many rows are lost.
        self._unstored: defaultdict[str, defaultdict[datetime, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        self._unstored_sum: defaultdict[str, Decimal] = defaultdict(Decimal)
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
            return (self._at_refresh.get(name, ZERO) + self._written[name] + self._queued[name]
                    + self._unstored_sum[name])

    # --- event loop side --------------------------------------------------------------

    def queued(self, key_id: str | None, cost: Decimal | None) -> None:
        if cost and key_id in self.keys.by_name:
            with self._lock:
                self._queued[key_id] += cost

    # --- writer thread side (items are (key_id, cost_usd, ts) of rows; ts may be left out) ---

    def written(self, items: Iterable[tuple[str | None, Decimal | None, datetime | None]]) -> None:
        """Rows now in the database. Rows replayed from a journal after a restart were
        never queued here, so the queued amount never goes below zero."""
        with self._lock:
            for key_id, cost, *_ in items:
                if cost and key_id in self.keys.by_name:
                    self._queued[key_id] = max(ZERO, self._queued[key_id] - cost)
                    self._written[key_id] += cost

    def dropped(self, items: Iterable[tuple[str | None, Decimal | None, datetime | None]]) -> None:
        """Rows that will never be in the database (refused, or dropped for want of room):
        no longer queued, but still spent; `datetime` is the row's ts (now if None)."""
        now = datetime.now(UTC)
        with self._lock:
            for key_id, cost, *when in items:
                if cost and key_id in self.keys.by_name:
                    self._queued[key_id] = max(ZERO, self._queued[key_id] - cost)
                    minute = ((when[0] if when else None) or now).replace(second=0, microsecond=0)
                    self._unstored[key_id][minute] += cost
                    self._unstored_sum[key_id] += cost

    def refresh(self, query: SpendQuery, now: datetime | None = None) -> None:
        """Re-read every budgeted key's spend from the database (writer thread only)."""
        now = now or datetime.now(UTC)
        windows = {k.name: period_start(k.period, now) for k in self.keys.by_name.values() if k.budget is not None}
        sums = query(windows) if windows else {}
        with self._lock:
            self._windows = windows
            self._at_refresh = dict(sums)
            self._written.clear()
            for name, minutes in self._unstored.items():
                # A minute that reaches into the period counts: a budget errs towards spend.
                start = windows.get(name)
                for minute in [m for m in minutes if start is None or m + _MINUTE <= start]:
                    del minutes[minute]
                self._unstored_sum[name] = sum(minutes.values(), ZERO)
        self.stale = False
        self.loaded.set()
