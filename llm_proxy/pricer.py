"""Pricing a finished call: its Record, or every attempt of a relayed call.

Kept out of the hooks: a row's cost needs the prices (pricing.toml over
genai-prices, see prices/sources.py), the once-per-model warnings, and for
relayed calls the sum of what each attempt billed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache

from . import apis
from .config.models import Target
from .config.pricing import PriceBook
from .prices.database import PriceDatabase
from .prices.sources import Prices
from .record import Record
from .rescue.relay import RelayJob
from .usage import Usage

logger = logging.getLogger(__name__)

# Model names come from clients: remember this many warned-about names, then
# say once that further ones go unlogged (`llm-proxy prices check` lists them all).
MAX_WARNED = 1024
MAX_LOGGED_NAME = 200


def loggable(name: str | None) -> str:
    """A client-supplied name fit for any log handler: escaped (no lone surrogates, no newlines), bounded."""
    if name is None:
        return "None"
    if len(name) > MAX_LOGGED_NAME:
        return repr(name[:MAX_LOGGED_NAME]) + f"... ({len(name)} characters)"
    # repr escapes lone surrogates, newlines and control characters; plain names stay as they are.
    return name if name.isprintable() else repr(name)


@cache
def bundled_database() -> PriceDatabase:
    """genai-prices' bundled snapshot, shared by every Pricer of the process (its memos too)."""
    return PriceDatabase()


_BUNDLED = object()


class Pricer:
    def __init__(self, prices: PriceBook, database: PriceDatabase | None | object = _BUNDLED) -> None:
        """`database`: genai-prices' bundled snapshot by default; None prices from pricing.toml alone."""
        db = bundled_database() if database is _BUNDLED else database
        assert db is None or isinstance(db, PriceDatabase)
        self.prices = Prices(prices, db)
        self._warned: set[tuple[str, str | None]] = set()
        self._warnings_capped = False

    def call(self, record: Record, usage: Usage, *, tier: str | None = None) -> Decimal | None:
        """The row's cost, at the call's own time (`record.ts`) and the service tier the response reported."""
        if record.api in apis.FREE:
            return Decimal(0)
        return self.usage(record.provider or "", record.response_model, record.model, usage, ts=record.ts, tier=tier)

    def usage(self, provider: str, response_model: str | None, model: str | None, usage: Usage, *,
              ts: datetime | None = None, tier: str | None = None) -> Decimal | None:
        """Cost of `usage` at `provider`'s price for the answered model, else the asked one."""
        if not usage.known:
            return None
        quote = self.prices.quote_call(provider, response_model, model)
        if quote is None:
            self._warn_once(provider, model, "no price in pricing.toml or genai-prices; cost left NULL")
            return None
        if quote.passed_over is not None:
            self._warn_once(provider, quote.model,
                            f'genai-prices knows it as {quote.db.id!r} (not a sibling of pricing.toml\'s prefix '
                            f'{quote.passed_over.key!r}): priced by genai-prices')
        if tier is None:
            tier = getattr(usage, "service_tier", None)  # set by the usage parsers that read one
        amount, why = self.prices.cost(quote, usage, ts or datetime.now(UTC), tier)
        if amount is None and why:
            self._warn_once(provider, quote.model, f"{why}; cost left NULL")
        return amount

    def relayed(self, record: Record, job: RelayJob) -> Decimal | None:
        """Fill a relayed call's row from its attempts; the cost is what every attempt billed."""
        total: Decimal | None = Decimal(0)
        entries = []
        for attempt in job.attempts:
            amount = self.usage(attempt.provider, attempt.response_model, attempt.model, attempt.usage, ts=record.ts)
            entries.append(attempt.to_json(amount))
            if attempt.usage.known:
                total = None if amount is None or total is None else total + amount
        record.attempts = entries
        record.upstream_url = job.upstream_url
        usage = job.attempts[-1].usage if job.served is not None else Usage()
        record.input_tokens, record.output_tokens, record.total_tokens = (
            usage.input_tokens, usage.output_tokens, usage.total_tokens)
        record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens = (
            usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens)
        if job.served is not None:
            served = job.attempts[-1]
            record.provider, record.response_model = served.provider, served.response_model
            primary = job.plan.targets[0]
            asked = Target(primary.provider, primary.model or job.requested_model)
            if job.served != asked:
                record.fallback_from = str(asked)
        return total if any(a.usage.known for a in job.attempts) else None

    def _warn_once(self, provider: str, model: str | None, why: str) -> None:
        key = (provider[:200], model[:200] if model else model)  # client-supplied: kept short
        if key in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            if not self._warnings_capped:
                self._warnings_capped = True
                logger.warning("llm-proxy: pricing warnings for %d models logged; further models not logged "
                               "(run `llm-proxy prices check`)", MAX_WARNED)
            return
        self._warned.add(key)
        logger.warning("llm-proxy: %s/%s: %s", loggable(provider), loggable(model), why)
