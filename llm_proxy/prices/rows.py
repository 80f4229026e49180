"""Stored rows, priced again: what `llm-proxy prices check` and `llm-proxy db reprice` read and write.

A row keeps input, output, cached, cache-write and reasoning counts in its
columns. The 1-hour share of cache writes, web searches and the service tier
are not columns; they are read back from the stored response body when it is
there and agrees with the columns (a row stored without bodies is repriced
with none of the three: 5-minute write rates, no search fees, standard tier).

A relayed row's cost is the sum of its attempts, whose cache counts are not
stored: when more than one attempt billed usage, the row is skipped (left as
it is) and counted, never guessed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .. import apis
from ..storage.dsn import Database
from ..usage import Usage, json_usage
from .sources import Prices

BATCH = 500
_SINCE = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `2w`, or an ISO date/datetime (UTC when it has no zone)."""
    now = now or datetime.now(UTC)
    match = _SINCE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        start = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use a span like 30d, 12h, 2w or a date like 2026-11-01") from None
    return start if start.tzinfo else start.replace(tzinfo=UTC)


@dataclass(slots=True)
class StoredRow:
    id: int
    ts: datetime
    provider: str | None
    api: str | None
    model: str | None
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: Decimal | None
    attempts: Any
    response_body: Any


_COLUMNS = ("id", "ts", "provider", "api", "model", "response_model", "input_tokens", "output_tokens",
            "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "attempts", "response_body")


class RowsUnreadable(ValueError):
    """The database or its table cannot be read (a ValueError: the CLI prints it as one sentence)."""


class RowStore:
    """Plain SQL on the calls table, PostgreSQL or SQLite (the schema is the proxy's; nothing is created)."""

    def __init__(self, db: Database, table: str) -> None:
        self.db, self.table = db, table
        try:
            if db.kind == "postgresql":
                import psycopg

                self._conn: Any = psycopg.connect(db.target, connect_timeout=10, application_name="llm-proxy cli")
                self._mark = "%s"
            else:
                # mode=rw: a mistyped path is an error, not a new empty database
                self._conn = sqlite3.connect(f"file:{quote(db.target)}?mode=rw", uri=True, timeout=10)
                self._mark = "?"
            self._conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RowsUnreadable(f"cannot read table {table} of {db.describe()}: {reason}") from e
        # Large response bodies are stored as parts: the view reads them back whole (tables made
        # by an older version have no view, and whole bodies).
        self._source = table
        try:
            self._conn.execute(f"SELECT 1 FROM {table}_full LIMIT 1").fetchall()
            self._source = f"{table}_full"
        except Exception:
            self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def _iso(self, ts: datetime) -> Any:
        return ts if self.db.kind == "postgresql" else ts.isoformat()  # SQLite stores isoformat text

    def models_seen(self, since: datetime) -> list[tuple[str, str | None, str | None, int]]:
        """(provider, model, response_model, rows) of the rows with usage since `since`."""
        m = self._mark
        rows = self._conn.execute(
            f"SELECT provider, model, response_model, count(*) FROM {self.table} "
            f"WHERE ts >= {m} AND provider IS NOT NULL AND (api IS NULL OR api <> {m}) "
            "AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) "
            "GROUP BY provider, model, response_model ORDER BY provider, model, response_model",
            (self._iso(since), apis.ANTHROPIC_COUNT_TOKENS)).fetchall()
        return [(p, mo, rm, int(n)) for p, mo, rm, n in rows]

    def batches(self, since: datetime, model: str | None, size: int = BATCH) -> Iterator[list[StoredRow]]:
        """Rows since `since` (of `model`, asked or answered), by id, `size` at a time."""
        m = self._mark
        where = f"ts >= {m} AND id > {m}"
        params: list[Any] = [self._iso(since)]
        if model is not None:
            where += f" AND (model = {m} OR response_model = {m})"
        last = 0
        while True:
            args = [*params, last] + ([model, model] if model is not None else []) + [size]
            rows = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM {self._source} WHERE {where} ORDER BY id LIMIT {m}", args
            ).fetchall()
            if self.db.kind == "postgresql":
                self._conn.rollback()  # no transaction held open between batches
            if not rows:
                return
            batch = [self._row(r) for r in rows]
            last = batch[-1].id
            yield batch

    def _row(self, values: Sequence[Any]) -> StoredRow:
        row = StoredRow(*values)
        if self.db.kind == "sqlite":
            row.ts = datetime.fromisoformat(row.ts)
            row.cost_usd = None if row.cost_usd is None else Decimal(str(row.cost_usd))
            row.attempts = _json(row.attempts)
            row.response_body = _json(row.response_body)
        if row.ts.tzinfo is None:
            row.ts = row.ts.replace(tzinfo=UTC)
        return row

    def set_costs(self, costs: Sequence[tuple[int, Decimal | None]]) -> None:
        """One transaction per batch."""
        m = self._mark
        params = [(None if c is None else (c if self.db.kind == "postgresql" else str(c)), i) for i, c in costs]
        sql = f"UPDATE {self.table} SET cost_usd = {m} WHERE id = {m}"
        if self.db.kind == "postgresql":
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.executemany(sql, params)
        else:
            with self._conn:
                self._conn.executemany(sql, params)


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def _body_tier(body: Any) -> str | None:
    """The service tier a stored response reported (OpenAI: top level; Anthropic: in usage)."""
    if not isinstance(body, dict):
        return None
    tier = body.get("service_tier")
    if tier is None and isinstance(body.get("usage"), dict):
        tier = body["usage"].get("service_tier")
    return tier if isinstance(tier, str) else None


def stored_usage(row: StoredRow) -> tuple[Usage, str | None]:
    """The row's usage from its columns, completed from its body where that agrees; and its tier."""
    usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens, cached_tokens=row.cached_tokens,
                  cache_write_tokens=row.cache_write_tokens, reasoning_tokens=row.reasoning_tokens)
    # Columns written before counts were checked may contradict each other; Usage() would drop the whole
    # side, and the price must see them as stored (a negative split prices as NULL).
    usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens = (
        row.input_tokens, row.cached_tokens, row.cache_write_tokens)
    usage.output_tokens, usage.reasoning_tokens = row.output_tokens, row.reasoning_tokens
    tier = _body_tier(row.response_body)
    if row.api and isinstance(row.response_body, dict):
        parsed, _ = json_usage(row.api, row.response_body)
        if (parsed.input_tokens, parsed.output_tokens) == (row.input_tokens, row.output_tokens):
            usage.cache_write_1h_tokens = parsed.cache_write_1h_tokens
            usage.web_search_requests = parsed.web_search_requests
            tier = getattr(parsed, "service_tier", None) or tier
    return usage, tier


class Unrepriceable(Exception):
    """The row's cost cannot be recomputed from what is stored."""


def reprice(prices: Prices, row: StoredRow) -> Decimal | None:
    """The row's cost at today's prices (at the row's own time); raises Unrepriceable."""
    if row.api in apis.FREE:
        return Decimal(0)
    if row.input_tokens is None and row.output_tokens is None:
        raise Unrepriceable("no usage")  # nothing to price: a local answer's 0 or an unknown NULL stays
    model = row.model
    if isinstance(row.attempts, list) and row.attempts:
        billed = [a for a in row.attempts if isinstance(a, dict) and "input_tokens" in a]
        if len(billed) > 1:
            raise Unrepriceable("relayed with several billed attempts")
        if billed and isinstance(billed[0].get("model"), str):
            model = billed[0]["model"]
    usage, tier = stored_usage(row)
    if not usage.known:
        raise Unrepriceable("no usage")
    quote = prices.quote_call(row.provider or "", row.response_model, model)
    if quote is None:
        return None
    return prices.cost(quote, usage, row.ts, tier)[0]
