"""Pricing a finished call: its Record, or every attempt of a relayed call.

Kept out of the hooks: a row's cost needs the price book, the once-per-model
warning, and for relayed calls the sum of what each attempt billed.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from . import apis
from .config.models import Target
from .config.pricing import PriceBook, cost, missing_rate
from .record import Record
from .rescue.relay import RelayJob
from .usage import Usage

logger = logging.getLogger(__name__)


class Pricer:
    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices
        self._warned: set[tuple[str, str | None]] = set()

    def call(self, record: Record, usage: Usage) -> Decimal | None:
        if record.api in apis.FREE:
            return Decimal(0)
        return self.usage(record.provider or "", record.response_model, record.model, usage)

    def usage(self, provider: str, response_model: str | None, model: str | None, usage: Usage) -> Decimal | None:
        """Cost of `usage` at `provider`'s price for the answered model, else the asked one."""
        if not usage.known:
            return None
        price = self.prices.find(provider, response_model) or self.prices.find(provider, model)
        if price is None:
            self._warn_once(provider, model, "no price in pricing.toml; cost left NULL")
            return None
        amount = cost(price, usage)
        if amount is None:
            self._warn_once(provider, model, f"{missing_rate(price, usage)}; cost left NULL")
        return amount

    def relayed(self, record: Record, job: RelayJob) -> Decimal | None:
        """Fill a relayed call's row from its attempts; the cost is what every attempt billed."""
        total: Decimal | None = Decimal(0)
        entries = []
        for attempt in job.attempts:
            amount = self.usage(attempt.provider, attempt.response_model, attempt.model, attempt.usage)
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
        if (provider, model) not in self._warned:
            self._warned.add((provider, model))
            logger.warning("llm-proxy: %s/%s: %s", provider, model, why)
