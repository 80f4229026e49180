"""The hourly and daily rollups answer every report exactly as the raw rows do: random rows
(NULL costs and dimensions, exponent costs, costs SQLite's integer rollup cannot hold,
timestamps on and next to hour and day boundaries, late rows into closed days) and random
windows and group_by, on PostgreSQL (a plain and a monthly-partitioned table) and SQLite;
and the window plan covers exactly the window."""

from __future__ import annotations

import os
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_proxy.control.params import GROUP_FIELDS, Filters, UsageQuery
from llm_proxy.control.plan import plan
from llm_proxy.control.reports import ClosedDays, Reports, drop_calls_table, ensure_rollup, money, rollup_ready
from llm_proxy.control.rollup import ensure_sqlite_rollup, sqlite_rollup_ready
from llm_proxy.record import Record
from llm_proxy.storage.dsn import Database
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.schema import schema_for, sqlite_schema
from llm_proxy.storage.sqlite import SqliteSink

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.replace(hour=0, minute=0, second=0)
FIGURES = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
           "reasoning_tokens", "cost_usd", "unpriced")
DIMS = {"key": "key_id", "model": "model", "response_model": "response_model", "provider": "provider",
        "api": "api", "status": "status"}


# --- the plan ------------------------------------------------------------------------------

moments = st.integers(-6 * 86400 * 10**6, 2 * 86400 * 10**6).map(lambda us: TODAY + timedelta(microseconds=us))
aligned = st.integers(-6 * 48, 2 * 48).map(lambda h: TODAY + timedelta(minutes=30 * h))
times = st.one_of(moments, aligned, aligned.map(lambda t: t - timedelta(microseconds=1)))


@settings(max_examples=300, deadline=None)
@given(since=times, until=times, now=times, levels=st.sampled_from([(), ("hourly",), ("hourly", "daily")]),
       probes=st.lists(times, min_size=1, max_size=20))
def test_plan_counts_every_moment_of_the_window_once_and_nothing_else(since, until, now, levels, probes):
    if since >= until:
        since, until = until, since + timedelta(microseconds=1)
    pieces = plan(since, until, now, levels)
    assert all(p.source in ("raw", *levels) for p in pieces)
    for t in [*probes, since, until, since - timedelta(microseconds=1), until - timedelta(microseconds=1)]:
        assert sum(p.sign for p in pieces if p.lo <= t < p.hi) == (1 if since <= t < until else 0), (t, pieces)
    for p in pieces:  # rollup pieces cover whole units
        if p.source != "raw":
            unit = timedelta(hours=1) if p.source == "hourly" else timedelta(days=1)
            assert (p.lo - TODAY) % unit == timedelta(0) and (p.hi - TODAY) % unit == timedelta(0)


# --- the data ------------------------------------------------------------------------------

edge_times = st.one_of(
    st.integers(-5 * 24, 3).map(lambda h: TODAY + timedelta(hours=h)),  # on an hour or a day boundary
    st.integers(-5 * 24, 3).map(lambda h: TODAY + timedelta(hours=h, microseconds=-1)),
    st.integers(-5 * 86400, 3 * 3600).map(lambda s: NOW + timedelta(seconds=s)),
    st.integers(-3600, 0).map(lambda s: NOW + timedelta(seconds=s)),  # the current hour
)
costs = st.one_of(
    st.none(),
    st.integers(0, 10**9).flatmap(lambda n: st.integers(0, 12).map(lambda e: Decimal(n).scaleb(-e))),
    st.integers(1, 99).map(lambda n: Decimal(n) * Decimal("1E-7")),  # str() gives exponent form
)
FINE_COST = Decimal("3E-15")  # finer than SQLite's rollup keeps: reports over it read the rows
records = st.builds(
    lambda ts, key, model, provider, status, error, tokens, cost: Record(
        request_id=uuid.uuid4().hex, ts=ts, provider=provider, api="openai-chat", method="POST",
        path="/v1/chat/completions", model=model, response_model=model and model + "-1", key_id=key,
        status=status, error=error, input_tokens=tokens, output_tokens=tokens and tokens // 3,
        cached_tokens=None, cache_write_tokens=tokens and 1, reasoning_tokens=None, cost_usd=cost),
    edge_times, st.sampled_from(["alice", "bob", None]), st.sampled_from(["m1", "m2", None]),
    st.sampled_from(["openai", "anthropic"]), st.sampled_from([200, 200, 429, 500, None]),
    st.sampled_from([None, None, "broke"]), st.one_of(st.none(), st.integers(0, 5000)), costs)
queries = st.builds(
    lambda since, until, group_by, key: (min(since, until), max(since, until) + timedelta(microseconds=1),
                                         tuple(group_by), Filters(key=key)),
    edge_times, edge_times, st.lists(st.sampled_from(GROUP_FIELDS), max_size=3, unique=True),
    st.sampled_from([None, None, "alice"]))


def expected(rows: list[tuple], since: datetime, until: datetime, group_by: tuple[str, ...],
             filters: Filters) -> tuple[dict, dict]:
    """The figures computed in Python from every raw row."""
    names = ("ts", "key_id", "model", "response_model", "provider", "api", "status", "error", *FIGURES[2:7],
             "cost_usd")
    groups: dict[tuple, dict[str, object]] = {}
    totals = {f: 0 for f in FIGURES}
    totals["cost_usd"] = Decimal(0)
    for raw in rows:
        row = dict(zip(names, raw))
        ts = row["ts"] if isinstance(row["ts"], datetime) else datetime.fromisoformat(row["ts"])
        if not since <= ts < until or (filters.key is not None and row["key_id"] != filters.key):
            continue
        key = tuple(ts.astimezone(UTC).strftime("%Y-%m-%d") if f == "day" else
                    ts.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z") if f == "hour" else row[DIMS[f]]
                    for f in group_by)
        for target in (groups.setdefault(key, {f: 0 for f in FIGURES} | {"cost_usd": Decimal(0)}), totals):
            target["requests"] += 1
            target["errors"] += 1 if (row["status"] or 0) >= 400 or row["error"] is not None else 0
            for f in FIGURES[2:7]:
                target[f] += row[f] or 0
            target["cost_usd"] += Decimal(row["cost_usd"]) if row["cost_usd"] is not None else 0
            target["unpriced"] += row["cost_usd"] is None
    for target in (*groups.values(), totals):
        target["cost_usd"] = money(target["cost_usd"])
    return totals, groups if group_by else {}


class Backend:
    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.table = f"llmp_roll_{secrets.token_hex(4)}"
        if kind == "sqlite":
            self.path = tmp / "rows.db"
            self.sink = SqliteSink(str(self.path), self.table)
            self.sink.connect()
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.executescript(sqlite_schema(self.table))
            ensure_sqlite_rollup(conn, self.table)
            assert sqlite_rollup_ready(conn, self.table)
            conn.close()
            self.reports = Reports(Database("sqlite", str(self.path)), self.table, closed=ClosedDays())
        else:
            self.conn = psycopg.connect(PG_URL, autocommit=True)
            ddl = partitioned_ddl if kind == "postgres-partitioned" else plain_ddl
            self.conn.execute(ddl(self.table).encode())
            assert ensure_rollup(self.conn, self.table)
            assert rollup_ready(self.conn, self.table)
            self.reports = Reports(Database("postgresql", PG_URL), self.table, closed=ClosedDays())
        self.reports.connect()
        assert self.reports.rollup

    def write(self, batch: list[Record], how: str) -> None:
        rows = [row_values(r, body_max_bytes=None) for r in batch]
        if self.kind == "sqlite":
            self.sink.write(rows)
            return
        from llm_proxy.record import COLUMNS
        columns = ", ".join(COLUMNS)
        if how == "copy":
            with self.conn.cursor() as cur, cur.copy(f"COPY {self.table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            with self.conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.table} ({columns}) VALUES ({', '.join('%s' for _ in COLUMNS)})",
                                rows)

    def change(self) -> None:
        """Updates and deletes of old rows (retention, repricing): the rollups follow, the kept sums go."""
        sql = (f"UPDATE {self.table} SET cost_usd = NULL WHERE id % 5 = 0",
               f"DELETE FROM {self.table} WHERE id % 7 = 0")
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None)
            for s in sql:
                conn.execute(s)
            conn.close()
        else:
            for s in sql:
                self.conn.execute(s)

    def raw(self) -> list[tuple]:
        sql = (f"SELECT ts, key_id, model, response_model, provider, api, status, error, input_tokens, "
               f"output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd FROM {self.table}")
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            rows = conn.execute(sql).fetchall()
            conn.close()
            return rows
        return self.conn.execute(sql).fetchall()

    def close(self) -> None:
        self.reports.close()
        if self.kind == "sqlite":
            self.sink.close()
        else:
            drop_calls_table(self.conn, self.table)
            self.conn.close()


def partitioned_ddl(table: str) -> str:
    """schema.sql's table (partitioned by month on ts, with its default partition) and a couple of
    month partitions, as the writer makes them."""
    ddl = schema_for(table)
    month = TODAY.replace(day=1)
    previous = (month - timedelta(days=1)).replace(day=1)
    following = (month + timedelta(days=32)).replace(day=1)
    for start, end in ((previous, month), (month, following)):
        ddl += (f"\nCREATE TABLE {table}_{start:%Y%m} PARTITION OF {table} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}');")
    return ddl


def plain_ddl(table: str) -> str:
    """schema.sql's table as an older version made it: not partitioned."""
    ddl = schema_for(table)
    assert ") PARTITION BY RANGE (ts);" in ddl
    return ddl.replace(") PARTITION BY RANGE (ts);", ");", 1)


@pytest.fixture(params=["postgres", "postgres-partitioned", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    found = Backend(request.param, tmp_path)
    try:
        yield found
    finally:
        found.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(records, min_size=1, max_size=30), how=st.sampled_from(["insert", "copy"]),
       change=st.booleans(), asked=st.lists(queries, min_size=1, max_size=4))
def test_random_reports_from_the_rollups_equal_the_raw_rows(backend, batch, how, change, asked):
    check_reports(backend, batch, how, change, asked)


def test_a_cost_finer_than_the_sqlite_rollup_keeps_is_still_summed_exactly(backend):
    batch = [Record(request_id=uuid.uuid4().hex, ts=NOW - timedelta(days=d, minutes=7), key_id="alice",
                    model="m1", provider="openai", status=200, input_tokens=3,
                    cost_usd=FINE_COST if d == 2 else Decimal("0.25")) for d in range(5)]
    asked = [(NOW - timedelta(days=6), NOW, group_by, Filters()) for group_by in ((), ("day",), ("key", "model"))]
    check_reports(backend, batch, "insert", False, asked)
    answer = backend.reports.usage(UsageQuery(NOW - timedelta(days=6), NOW))
    assert answer["totals"]["cost_usd"] == "1.000000000000003"


def check_reports(backend: Backend, batch: list[Record], how: str, change: bool, asked: list[tuple]) -> None:
    if batch:
        backend.write(batch, how)  # rows add up over the examples, so the kept sums of closed days get reused
    if change:
        backend.change()
    rows = backend.raw()
    for since, until, group_by, filters in asked:
        answer = backend.reports.usage(UsageQuery(since, until, group_by, filters))
        totals, groups = expected(rows, since, until, group_by, filters)
        assert answer["totals"] == totals
        got = {tuple(g[f] for f in group_by): {f: g[f] for f in FIGURES} for g in answer["groups"]}
        assert got == groups
        costs = [Decimal(g["cost_usd"]) for g in answer["groups"]]
        assert costs == sorted(costs, reverse=True)


def test_a_dropped_partition_leaves_the_rollups_through_rebuild(tmp_path):
    backend = Backend("postgres-partitioned", tmp_path)
    try:
        month = TODAY.replace(day=1)
        previous = (month - timedelta(days=1)).replace(day=1)
        batch = [Record(request_id=uuid.uuid4().hex, ts=ts, key_id="alice", model="m1", provider="openai",
                        status=200, input_tokens=5, cost_usd=Decimal("0.125"))
                 for ts in (previous + timedelta(days=3, hours=5), previous + timedelta(days=9),
                            NOW - timedelta(hours=2), NOW - timedelta(minutes=5))]
        asked = [(previous, NOW + timedelta(hours=1), group_by, Filters()) for group_by in ((), ("day",))]
        check_reports(backend, batch, "copy", False, asked)
        backend.conn.execute(f"DROP TABLE {backend.table}_{previous:%Y%m}")  # retention: no trigger fires
        stale = backend.reports.usage(UsageQuery(previous, NOW + timedelta(hours=1)))
        assert stale["totals"]["requests"] > len(backend.raw())
        backend.conn.execute(f"SELECT {backend.table}_rollup_rebuild(%s, %s)", (previous, month))
        check_reports(backend, [], "copy", False, asked)
    finally:
        backend.close()
