"""Reading the rows back: usage sums, request pages, one request. Shared by the control
plane's API (in its worker threads) and `llm-proxy report` (directly).

Money is summed exactly: numeric in PostgreSQL, Decimal in Python for SQLite
(which keeps costs as text; its rollups as whole 10^-12 USD). Whole days come from
the daily rollup, whole hours from the hourly one, the minutes at the edges from the
rows (plan.py); all kept by triggers in the rows' own transactions (rollup.py).
Sums of days that ended hours ago may be kept (ClosedDays) for as long as the
rollups' generation counter, which every late, changed or deleted row bumps, stays
the same: a refreshing dashboard then reads only today's rollup rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..record import COLUMNS, JSON_COLUMNS
from ..storage.dsn import Database
from ..storage.schema import sqlite_schema
from .groups import MEASURES, ClosedDays, Part, answer, money
from .params import Filters, RequestsQuery, UsageQuery
from .plan import DAY, Piece, floor, plan
from .rollup import (COST_SCALE, drop_calls_table, ensure_rollup, ensure_sqlite_rollup, rollup_ready,
                     sqlite_rollup_ready)
from .usage_sql import final_json_sql, usage_sql

__all__ = ["MEASURES", "ClosedDays", "Reports", "drop_calls_table", "ensure_rollup", "money", "rollup_ready"]

logger = logging.getLogger(__name__)

REPORT_WORK_MEM = "64MB"  # per sort or hash of a report, on its own connection only
# A day that ended this long ago may be kept (ClosedDays): rows more than 1 h late bump the generation.
CLOSED_AFTER = timedelta(hours=3)
LIST_COLUMNS = tuple(c for c in ("id", *COLUMNS) if c not in ("request_body", "response_body"))


class _DecimalSum:
    """SQLite aggregate: the exact sum of decimal text times a sign (SQLite's own sum() goes
    through floats)."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None, sign: int) -> None:
        if value is not None:
            self.total += Decimal(value) * sign

    def finalize(self) -> str:
        return str(self.total)


class Reports:
    """One connection's worth of report queries; not thread-safe (one per worker thread)."""

    def __init__(self, database: Database, table: str, *, statement_timeout: float = 30.0,
                 ensure: bool = False, closed: ClosedDays | None = None) -> None:
        self.database = database
        self.closed = closed if closed is not None else ClosedDays()
        self.table = table
        self.timeout = statement_timeout
        self.postgres = database.kind == "postgresql"
        self._conn: Any = None
        self._ensure = ensure
        self.rollup = False
        self._deadline = 0.0

    # --- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        self.close()
        if self.postgres:
            conn = psycopg.connect(
                self.database.target, autocommit=True, connect_timeout=5, application_name="llm-proxy-reports",
                # work_mem: a report grouping tens of thousands of keys and models hashes in memory
                # instead of sorting on disk (measured: 409 -> 290 ms for 400,000 rows).
                options=f"-c statement_timeout={int(self.timeout * 1000)} -c TimeZone=UTC -c work_mem={REPORT_WORK_MEM}",
            )
            try:
                if self._ensure:
                    ensure_rollup(conn, self.table)
                self.rollup = rollup_ready(conn, self.table)
            except BaseException:
                conn.close()
                raise
        else:
            path = Path(self.database.target)
            if self._ensure:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, timeout=10, isolation_level=None)
                conn.executescript(sqlite_schema(self.table))
            else:  # a report only reads: never create a database file by mistake
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", timeout=10, isolation_level=None,
                                       uri=True)
            if self._ensure:
                ensure_sqlite_rollup(conn, self.table)
            self.rollup = sqlite_rollup_ready(conn, self.table)
            conn.create_aggregate("decimal_sum", 2, _DecimalSum)
            # A report over its time is stopped, like PostgreSQL's statement_timeout.
            conn.set_progress_handler(lambda: 1 if time.monotonic() > self._deadline else 0, 10000)
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _fetch(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; a broken connection is reopened once."""
        for attempt in (1, 2):
            if self._conn is None:
                self.connect()
            try:
                if self.postgres:
                    with self._conn.cursor(row_factory=dict_row) as cur:
                        return cur.execute(sql, params or {}).fetchall()
                self._deadline = time.monotonic() + self.timeout
                cur = self._conn.execute(sql, params or {})
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- usage --------------------------------------------------------------------------

    def usage(self, query: UsageQuery) -> dict[str, Any]:
        """The usage API's answer for `query` (contract shape)."""
        return json.loads(self.usage_json(query))

    def usage_json(self, query: UsageQuery) -> bytes:
        """The usage API's answer as JSON text. A report grouped by key and model can have tens
        of thousands of groups: the kept sums of its closed days (groups.py) serve it; without
        them, on PostgreSQL such a wide report is summed, sorted and written out by the server in
        one statement (usage_sql.final_json_sql)."""
        head = {"since": _iso(query.since), "until": _iso(query.until), "group_by": list(query.group_by)}
        if self._conn is None:
            self.connect()
        since, until, now = query.since.astimezone(UTC), query.until.astimezone(UTC), datetime.now(UTC)
        pieces = plan(since, until, now, self._levels(query))
        kept, pieces = self._closed_part(pieces, query, now)
        if kept is None and self.postgres and _wide(query.group_by):
            sql, params = final_json_sql(self.table, pieces, query.group_by, query.filters)
            (row,) = self._fetch(sql, params)
            totals = {m: money(_decimal(row[m])) if m == "cost_usd" else int(row[m] or 0) for m in MEASURES}
            text = json.dumps({**head, "totals": totals})
            return (text[:-1] + ', "groups": ' + row["groups"] + "}").encode()
        try:
            rows = self._sum_pieces(pieces, query) if pieces else []
        except sqlite3.OperationalError as e:
            if "overflow" not in str(e):
                raise
            rows = [{"odd": 1}]  # a SQLite rollup sum beyond 64 bits: the rows are summed instead
        if any(row.get("odd") for row in rows) or (kept is not None and kept.odd):
            kept, rows = None, self._sum_pieces(plan(since, until, now, ()), query)
        return answer(head, kept, Part(rows, query.group_by))

    def _closed_part(self, pieces: list[Piece], query: UsageQuery, now: datetime
                     ) -> tuple[Part | None, list[Piece]]:
        """The kept sums of the window's closed days (summed now if not kept yet) and the
        pieces left to read."""
        closed = floor(now - CLOSED_AFTER, DAY)
        daily = [p for p in pieces if p.source == "daily" and p.sign > 0 and p.lo < closed]
        if not daily:
            return None, pieces
        (piece,) = daily  # plan() gives at most one
        end = min(piece.hi, closed)
        rest = [p for p in pieces if p is not piece]
        if end < piece.hi:
            rest.append(Piece("daily", end, piece.hi, 1))
        generation = self._fetch(f"SELECT n FROM {self.table}_rollup_gen")[0]["n"]
        key = (query.group_by, query.filters, piece.lo, end)
        part = self.closed.get(key, generation)
        if part is None:
            rows = self._sum_pieces([Piece("daily", piece.lo, end, 1)], query)
            part = Part(rows, query.group_by)
            part.odd = any(row.get("odd") for row in rows)
            self.closed.put(key, generation, part)
        return part, rest

    def _levels(self, query: UsageQuery) -> tuple[str, ...]:
        if not self.rollup:
            return ()
        return ("hourly",) if "hour" in query.group_by else ("hourly", "daily")

    def _sum_pieces(self, pieces: list[Piece], query: UsageQuery) -> list[dict[str, Any]]:
        sql, params = usage_sql(self.table, pieces, query.group_by, query.filters, postgres=self.postgres)
        rows = self._fetch(sql, params)
        for row in rows:
            if self.postgres:
                row["cost_usd"] = _decimal(row["cost_usd"])
            else:
                try:
                    units = Decimal(int(row.pop("cost_units") or 0)).scaleb(-COST_SCALE)
                except OverflowError:
                    units = Decimal(0)
                    row["odd"] = 1
                row["cost_usd"] = units + _decimal(row.pop("cost_text"))
        return rows

    # --- requests -----------------------------------------------------------------------

    def requests(self, query: RequestsQuery) -> dict[str, Any]:
        """A page of rows without bodies, newest first, and the `before` of the next page."""
        mark = (lambda n: f"%({n})s") if self.postgres else (lambda n: f":{n}")
        where, params = [], {}
        for name, column in (("key", "key_id"), ("model", "model"), ("provider", "provider"),
                             ("status", "status")):
            value = getattr(query.filters, name)
            if value is not None:
                where.append(f"{column} = {mark(name)}")
                params[name] = value
        for name, op, value in (("before", "id <", query.before), ("since", "ts >=", query.since),
                                ("until", "ts <", query.until)):
            if value is not None:
                where.append(f"{op} {mark(name)}")
                params[name] = value if self.postgres or not isinstance(value, datetime) else value.isoformat()
        sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM {self.table}"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY id DESC LIMIT {query.limit}")
        rows = [self._row(r) for r in self._fetch(sql, params)]
        return {"requests": rows, "next_before": rows[-1]["id"] if len(rows) == query.limit else None}

    def request(self, request_id: str) -> dict[str, Any] | None:
        mark = "%(rid)s" if self.postgres else ":rid"
        # The view: large bodies are stored as parts by hash and read back there as they arrived.
        rows = self._fetch(f"SELECT id, {', '.join(COLUMNS)} FROM {self.table}_full WHERE request_id = {mark}",
                           {"rid": request_id})
        return self._row(rows[0]) if rows else None

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        ts = out.get("ts")
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts)
        if isinstance(ts, datetime):
            out["ts"] = _iso(ts.astimezone(UTC))
        if out.get("cost_usd") is not None:
            out["cost_usd"] = money(_decimal(out["cost_usd"]))
        if "streaming" in out and out["streaming"] is not None:
            out["streaming"] = bool(out["streaming"])
        for column in JSON_COLUMNS:
            if isinstance(out.get(column), str):
                try:
                    out[column] = json.loads(out[column])
                except ValueError:
                    pass  # stored as it came
        return out

    # --- spend --------------------------------------------------------------------------

    def spend(self, windows: Mapping[str, datetime]) -> dict[str, Decimal]:
        """Cost per key since each key's start (the keys API's spend_usd), summed as a report sums it:
        one query per distinct start (keys of one period share it), grouped by key."""
        now = datetime.now(UTC)
        by_start: dict[datetime, set[str]] = {}
        for name, start in windows.items():
            by_start.setdefault(start, set()).add(name)
        sums: dict[str, Decimal] = {}
        for start, names in by_start.items():
            only = next(iter(names)) if len(names) == 1 else None
            answer = self.usage(UsageQuery(min(start, now), now, ("key",), Filters(key=only)))
            for group in answer["groups"]:
                if group["key"] in names:
                    sums[group["key"]] = Decimal(group["cost_usd"])
        return sums


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_NARROW = {"provider", "api", "status", "day"}


def _wide(group_by: tuple[str, ...]) -> bool:
    """Can this report have tens of thousands of groups (two of key, model, response_model and
    hour, or one of them with hour)?"""
    return len([f for f in group_by if f not in _NARROW]) >= 2


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_NARROW = {"provider", "api", "status", "day"}


def _wide(group_by: tuple[str, ...]) -> bool:
    """Can this report have tens of thousands of groups (two of key, model, response_model and
    hour, or one of them with hour)?"""
    return len([f for f in group_by if f not in _NARROW]) >= 2


def _merge(first: list[dict[str, Any]], second: list[dict[str, Any]], group_by: tuple[str, ...]
           ) -> list[dict[str, Any]]:
    """Add two lists of grouped rows (the kept closed days and the rest) group by group."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in first:
        merged[tuple(row[f] for f in group_by)] = dict(row)
    for row in second:
        key = tuple(row[f] for f in group_by)
        found = merged.get(key)
        if found is None:
            merged[key] = row
        else:
            for measure in (*MEASURES, "odd"):
                if measure in row:
                    found[measure] = (found.get(measure) or 0) + (row[measure] or 0)
    return list(merged.values())


Opener = Callable[[], Reports]
