"""Budget alerts: a key crossing 50%, 80% and 100% of its budget sends one signed POST each per period.

`crossed` is a plain function of the spend; `BudgetAlerts` watches finished rows
(LLMProxy.record_listeners) and, for a threshold not yet alerted in this
process, inserts a row into llm_budget_alerts with ON CONFLICT DO NOTHING and
sends only if the insert happened, so proxies sharing a database send each
alert once between them. A rolling period (1d, 7d, 30d) has no calendar start,
so its alerts are once per threshold per period-long bucket counted from the
Unix epoch (UTC).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..keys.model import KeyRing, period_start
from ..limits.budget import SpendBook
from ..record import Record
from .store import JobStore, now
from .webhooks import Sender, payload_bytes

logger = logging.getLogger(__name__)

THRESHOLDS = (50, 80, 100)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def crossed(spend: Decimal, budget: Decimal) -> list[int]:
    """The thresholds (percent) that `spend` has reached; none for a zero budget."""
    if budget <= 0:
        return []
    return [t for t in THRESHOLDS if spend * 100 >= budget * t]


def alert_period(period: str, moment: datetime) -> datetime:
    """The start of the period an alert belongs to (calendar month, or an epoch-aligned bucket)."""
    if period == "monthly":
        return period_start(period, moment)
    length = timedelta(days=int(period.rstrip("d")))
    return _EPOCH + length * ((moment - _EPOCH) // length)


def money(amount: Decimal) -> str:
    text = format(amount.normalize(), "f") if amount else "0"
    return text


class BudgetAlerts:
    def __init__(self, url: str, store: JobStore, sender: Sender, keys: Callable[[], KeyRing],
                 spend: Callable[[], SpendBook]) -> None:
        self.url = url
        self.store = store
        self.sender = sender
        self.keys = keys
        self.spend = spend
        self._seen: set[tuple[str, datetime, int]] = set()  # alerts this process sent or found sent
        self._tasks: set[asyncio.Task[Any]] = set()

    def observe(self, record: Record) -> None:
        """A record listener: quick, on the event loop; the database work goes to the store's thread."""
        key = self.keys().by_name.get(record.key_id or "")
        if key is None or key.budget is None:
            return
        spent = self.spend().spend(key.name)
        if spent is None:
            return
        spent += record.cost_usd or 0  # the listener runs before the writer counts this row
        moment = now()
        start = alert_period(key.period, moment)
        due = [t for t in crossed(spent, key.budget) if (key.name, start, t) not in self._seen]
        if not due:
            return
        if len(self._seen) > 10_000:  # old periods' entries: the table remembers them anyway
            self._seen = {entry for entry in self._seen if entry[1] == start}
        for threshold in due:
            self._seen.add((key.name, start, threshold))
            payload = {"type": "budget.threshold", "key": key.name, "threshold": threshold,
                       "spend_usd": money(spent), "budget_usd": money(key.budget), "period": key.period}
            task = asyncio.ensure_future(self._send(key.name, start, threshold, spent, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, name: str, start: datetime, threshold: int, spent: Decimal,
                    payload: dict[str, Any]) -> None:
        try:
            first = await self.store.run(lambda s: s.alert_once(name, start, threshold, spent, now()))
        except Exception as e:
            logger.warning("llm-proxy budget alert for key %r at %d%% not sent: database unreachable (%s)",
                           name, threshold, e)
            self._seen.discard((name, start, threshold))  # the next row tries again
            return
        if not first:
            return  # another proxy (or an earlier run of this one) sent it
        logger.info("llm-proxy key %r reached %d%% of its budget; alerting", name, threshold)
        outcome = await self.sender.deliver(self.url, payload_bytes(payload))
        if not outcome.delivered:
            logger.warning("llm-proxy budget alert for key %r at %d%% was not delivered: %s",
                           name, threshold, outcome.error)
