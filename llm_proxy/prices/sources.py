"""Which price a call gets: the operator's pricing.toml, else genai-prices, else none.

In order, for the answered model name and then the requested one:

1. a pricing.toml entry whose key is the whole name: the operator said so;
2. a pricing.toml entry whose key is only a prefix of the name, unless
   genai-prices knows the name as a model of its own (not the model the
   prefix itself names): then the prefix is a sibling's price (gpt-5.5 for
   gpt-5.5-cyber) and the database's price is the right one;
3. genai-prices, at the call's own time and service tier;
4. no price: the cost stays NULL.

Answers are remembered per (provider, name) in a bounded memo: the names come
from clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..config.memo import Memo
from ..config.pricing import Entry, PriceBook, cost, missing_rate, unknown_count
from ..usage.model import Usage
from .database import DbModel, PriceDatabase, Rates, TierUnpriced

TOML = "pricing.toml"
DATABASE = "genai-prices"


@dataclass(frozen=True, slots=True)
class Quote:
    """How one model name of one provider is priced, and why."""

    provider: str
    model: str
    source: str  # TOML or DATABASE
    entry: Entry | None = None  # the pricing.toml entry (TOML)
    db: DbModel | None = None  # the database's model (DATABASE)
    passed_over: Entry | None = None  # a pricing.toml prefix the database overruled

    @property
    def catch_all(self) -> bool:
        """Priced by a pricing.toml "" key, which matches every name."""
        return self.entry is not None and self.entry.key == ""

    @property
    def from_prefix(self) -> bool:
        """Priced by a pricing.toml key that is only part of the name (the "" catch-all excepted)."""
        return self.entry is not None and not self.entry.exact and self.entry.key != ""

    def describe(self) -> str:
        if self.entry is not None:
            table = f'[{self.entry.table}]' if self.entry.table == self.provider else f'["{self.entry.table}"]'
            if self.entry.exact:
                how = "exact key"
            elif self.entry.key == "":
                how = 'catch-all key ""'
            else:
                how = "prefix key"
            return f'pricing.toml {table} {how} "{self.entry.key}"' if self.entry.key else f"pricing.toml {table} {how}"
        assert self.db is not None
        return f"genai-prices model {self.db.id!r} of provider {self.db.provider.id!r}"


class Prices:
    """pricing.toml over genai-prices; `database=None` prices from pricing.toml alone."""

    def __init__(self, book: PriceBook, database: PriceDatabase | None) -> None:
        self.book = book
        self.database = database
        self._quotes: Memo[tuple[str, str], Quote | None] = Memo(self._resolve)

    def quote(self, provider: str, model: str | None) -> Quote | None:
        if not model:
            return None
        return self._quotes((provider, model))

    def quote_call(self, provider: str, response_model: str | None, model: str | None) -> Quote | None:
        """The answered model's price, else the requested one's."""
        return self.quote(provider, response_model) or self.quote(provider, model)

    def _resolve(self, key: tuple[str, str]) -> Quote | None:
        provider, model = key
        entry = self.book.match(provider, model)
        if entry is not None and entry.exact:
            return Quote(provider, model, TOML, entry=entry)
        known = self.database.find(provider, model) if self.database is not None else None
        if entry is not None:
            if known is not None and self._sibling(provider, entry, known):
                return Quote(provider, model, DATABASE, db=known, passed_over=entry)
            return Quote(provider, model, TOML, entry=entry)
        if known is not None:
            return Quote(provider, model, DATABASE, db=known)
        return None

    def _sibling(self, provider: str, entry: Entry, known: DbModel) -> bool:
        """Whether the database knows the name as another model than the one the prefix names."""
        assert self.database is not None
        named = self.database.find(provider, entry.key)
        return named is None or named.model is not known.model

    def rates(self, quote: Quote, ts: datetime, tier: str | None) -> Rates:
        """The database rates of a DATABASE quote (raises TierUnpriced)."""
        assert quote.db is not None and self.database is not None
        return self.database.rates(quote.db, ts, tier)

    def cost(self, quote: Quote, usage: Usage, ts: datetime, tier: str | None) -> tuple[Decimal | None, str | None]:
        """USD for `usage` under `quote`, and why it is None when the price (not the usage) is lacking."""
        if unknown_count(usage) is not None:
            return None, None
        if quote.entry is not None:
            amount = cost(quote.entry.price, usage)
            why = None if amount is not None else missing_rate(quote.entry.price, usage)
        else:
            try:
                amount, why = self.rates(quote, ts, tier).cost(usage), None
            except TierUnpriced as e:
                amount, why = None, str(e)
        if amount is not None and amount < 0:
            amount = None  # no price makes a call earn money
        return amount, why
