"""Reading the rows back: usage sums, request pages, one request. Shared by the control
plane's API (in its worker threads) and `llm-proxy report` (directly).

Money is summed exactly: numeric in PostgreSQL, Decimal in Python for SQLite
(which keeps costs as text). On PostgreSQL 15+ whole hours come from the hourly
rollup (rollup_postgres.sql, kept by triggers in the rows' own transactions)
and the partial hours at the window's edges from the rows themselves, so a
report over 30 days reads a few thousand rollup rows instead of every call.
"""

from __future__ import annotations

import json
import logging
import re
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
from ..storage.schema import schema_for, sqlite_schema
from .params import Filters, RequestsQuery, UsageQuery

logger = logging.getLogger(__name__)

ROLLUP_SQL = Path(__file__).with_name("rollup_postgres.sql")
REPORT_WORK_MEM = "64MB"  # per sort or hash of a report, on its own connection only
_SCHEMA_LOCK = 0x6C6C6D70  # the writer's lock for applying DDL (storage/postgres.py)
MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_usd", "unpriced")
TOKEN_MEASURES = MEASURES[2:7]
_DIM_COLUMNS = {"key": "key_id", "model": "model", "response_model": "response_model", "provider": "provider",
                "api": "api", "status": "status"}
LIST_COLUMNS = tuple(c for c in ("id", *COLUMNS) if c not in ("request_body", "response_body"))
_DDL_WORDS = re.compile(r"\b(llm_requests)")


def money(value: Decimal | None) -> str:
    """Exact decimal text without exponent or trailing zeros: Decimal('3.6780E-4') -> '0.0003678'."""
    if value is None:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


class _DecimalSum:
    """SQLite aggregate: the exact sum of decimal text (SQLite's own sum() goes through floats)."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return str(self.total)


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_ceil(moment: datetime) -> datetime:
    floor = hour_floor(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


class Reports:
    """One connection's worth of report queries; not thread-safe (one per worker thread)."""

    def __init__(self, database: Database, table: str, *, statement_timeout: float = 30.0,
                 ensure: bool = False) -> None:
        self.database = database
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
            conn.create_aggregate("decimal_sum", 1, _DecimalSum)
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
        rows = self._fetch(*self._usage_sql(query))
        dims = query.group_by
        # Each cost is parsed once and the rows sorted before they become JSON groups: a report
        # grouped by key and model can have tens of thousands of groups.
        costed = [(_decimal(row["cost_usd"]), row) for row in rows if row["requests"]] if dims else []
        costed.sort(key=lambda item: (-item[0], *(_sortable(item[1][f]) for f in dims)))
        groups = [self._group(row, dims, cost) for cost, row in costed]
        totals: dict[str, Any] = {m: 0 for m in MEASURES}
        cost = Decimal(0)
        for row in rows:
            for measure in MEASURES:
                if measure == "cost_usd":
                    cost += _decimal(row[measure])
                else:
                    totals[measure] += int(row[measure] or 0)
        totals["cost_usd"] = money(cost)
        return {
            "since": _iso(query.since), "until": _iso(query.until), "group_by": list(query.group_by),
            "totals": totals, "groups": groups if query.group_by else [],
        }

    def _group(self, row: Mapping[str, Any], group_by: tuple[str, ...], cost: Decimal) -> dict[str, Any]:
        group: dict[str, Any] = {}
        for field in group_by:
            value = row[field]
            if field in ("day", "hour") and value is not None:
                # PostgreSQL gives a timestamp; SQLite the text prefix of ts ("2026-11-23", "2026-11-23T10").
                moment = value if isinstance(value, datetime) else datetime.fromisoformat(
                    value + (":00" if field == "hour" else ""))
                value = moment.strftime("%Y-%m-%d" if field == "day" else "%Y-%m-%dT%H:00Z")
            elif field == "status" and value is not None:
                value = int(value)
            group[field] = value
        for measure in MEASURES:
            group[measure] = money(cost) if measure == "cost_usd" else int(row[measure] or 0)
        return group

    def _usage_sql(self, query: UsageQuery) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"since": query.since, "until": query.until}
        filters = ""
        for name, column in (("key", "key_id"), ("model", "model"), ("provider", "provider")):
            value = getattr(query.filters, name)
            if value is not None:
                params[name] = value
                filters += f" AND {column} = %({name})s" if self.postgres else f" AND {column} = :{name}"
        dims = query.group_by
        if self.postgres:
            return self._usage_postgres(dims, filters, params, query)
        return self._usage_sqlite(dims, filters, params)

    def _usage_postgres(self, dims: tuple[str, ...], filters: str, params: dict[str, Any], query: UsageQuery
                        ) -> tuple[str, dict[str, Any]]:
        need_hour = "day" in dims or "hour" in dims
        columns = [_DIM_COLUMNS[d] for d in dims if d in _DIM_COLUMNS]
        raw_hour = "date_trunc('hour', ts AT TIME ZONE 'UTC')" if need_hour else "NULL::timestamp"
        raw = (
            f"SELECT {', '.join([raw_hour + ' AS hour', *columns])}, count(*) AS requests, "
            "count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors, "
            + ", ".join(f"sum({m}) AS {m}" for m in TOKEN_MEASURES)
            + ", sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced "
            f"FROM {self.table} WHERE {{window}}{filters} GROUP BY {', '.join(str(i) for i in range(1, len(columns) + 2))}"
        )
        parts = []
        first, last = hour_ceil(query.since), hour_floor(query.until)
        if self.rollup and first < last:
            params.update(first=first, last=last)
            parts.append(raw.replace(
                "{window}", "((ts >= %(since)s AND ts < %(first)s) OR (ts >= %(last)s AND ts < %(until)s))"))
            rollup_hour = "hour AT TIME ZONE 'UTC'" if need_hour else "NULL::timestamp"
            parts.append(
                f"SELECT {', '.join([rollup_hour + ' AS hour', *columns])}, "
                + ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
                + f" FROM {self.table}_hourly WHERE hour >= %(first)s AND hour < %(last)s{filters} "
                f"GROUP BY {', '.join(str(i) for i in range(1, len(columns) + 2))}"
            )
        else:
            parts.append(raw.replace("{window}", "ts >= %(since)s AND ts < %(until)s"))
        outer = [f"{_DIM_COLUMNS[d]} AS {d}" for d in dims if d in _DIM_COLUMNS]
        if "day" in dims:
            outer.append("date_trunc('day', hour) AS day")
        if "hour" in dims:
            outer.append("hour AS hour")
        select = ", ".join([*outer, *(f"sum({m}) AS {m}" for m in MEASURES)])
        group = f" GROUP BY {', '.join(str(i) for i in range(1, len(outer) + 1))}" if outer else ""
        return f"SELECT {select} FROM ({' UNION ALL '.join(parts)}) AS u{group}", params

    def _usage_sqlite(self, dims: tuple[str, ...], filters: str, params: dict[str, Any]
                      ) -> tuple[str, dict[str, Any]]:
        params = {**params, "since": params["since"].isoformat(), "until": params["until"].isoformat()}
        outer = [f"{_DIM_COLUMNS[d]} AS {d}" for d in dims if d in _DIM_COLUMNS]
        if "day" in dims:
            outer.append("substr(ts, 1, 10) AS day")
        if "hour" in dims:
            outer.append("substr(ts, 1, 13) AS hour")
        select = ", ".join([
            *outer, "count(*) AS requests",
            "sum(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END) AS errors",
            *(f"sum({m}) AS {m}" for m in TOKEN_MEASURES),
            "decimal_sum(cost_usd) AS cost_usd", "sum(cost_usd IS NULL) AS unpriced",
        ])
        group = f" GROUP BY {', '.join(str(i) for i in range(1, len(outer) + 1))}" if outer else ""
        return f"SELECT {select} FROM {self.table} WHERE ts >= :since AND ts < :until{filters}{group}", params

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


def _sortable(value: Any) -> tuple[bool, str]:
    return (value is None, "" if value is None else f"{value:>12}" if isinstance(value, int) else str(value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def drop_calls_table(conn: psycopg.Connection, table: str) -> None:
    """Drop a calls table with what the control plane keeps beside it (tests and benchmarks)."""
    conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_hourly, {table}_bodies CASCADE")
    conn.execute(f"DROP FUNCTION IF EXISTS {table}_hourly_sync(), {table}_hourly_truncate() CASCADE")


def rollup_ready(conn: psycopg.Connection, table: str) -> bool:
    """Is the rollup there with all its triggers? Otherwise reports read the rows alone."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
        "AND tgname = ANY(%s))",
        (f"{table}_hourly", table, [f"{table}_hourly_{s}" for s in ("ins", "upd", "del", "trunc")]),
    ).fetchone()
    return bool(row and row[0] and row[1] == 4)


def ensure_rollup(conn: psycopg.Connection, table: str) -> bool:
    """Create the rows' table (schema.sql) and, on PostgreSQL 15+, the hourly rollup with its
    triggers, filled from the rows already there while writes wait. Idempotent; False when the
    server is too old for it (reports then read the rows alone)."""
    if conn.info.server_version < 150000:
        logger.info("llm-proxy reports read rows directly: the hourly rollup needs PostgreSQL 15+")
        return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_for(table).encode())
        if rollup_ready(conn, table):
            return True
        started = time.monotonic()
        conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")  # no row written meanwhile
        conn.execute(_DDL_WORDS.sub(table, ROLLUP_SQL.read_text()).encode())
    logger.info("llm-proxy built the hourly rollup of %s in %.1fs", table, time.monotonic() - started)
    return True


Opener = Callable[[], Reports]
