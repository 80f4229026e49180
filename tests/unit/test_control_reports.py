"""Usage reports equal SQL sums over the raw rows, to the last digit, on PostgreSQL (with and
without the hourly rollup) and on SQLite; the rollup follows inserts, COPY, updates, deletes."""

from __future__ import annotations

import os
import random
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from llm_proxy.control.params import Filters, RequestsQuery, UsageQuery, parse_group_by
from llm_proxy.control.reports import Reports, drop_calls_table, ensure_rollup, money, rollup_ready
from llm_proxy.record import COLUMNS, Record
from llm_proxy.storage.dsn import Database
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
NOW = datetime.now(UTC)
KEYS = ["alice", "bob", "carol", None]
MODELS = ["gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash", None]
PROVIDERS = ["openai", "anthropic", "gemini"]
DIMS = {"key": "key_id", "model": "model", "response_model": "response_model", "provider": "provider",
        "api": "api", "status": "status"}


def random_cost(rng: random.Random) -> Decimal | None:
    choice = rng.random()
    if choice < 0.15:
        return None
    if choice < 0.25:
        return Decimal("1E-7") * rng.randint(1, 9)  # str() gives exponent form: must stay exact
    return Decimal(rng.randint(0, 10 ** 9)) / Decimal(10 ** rng.randint(6, 12))


def random_records(rng: random.Random, count: int, span: timedelta = timedelta(days=3)) -> list[Record]:
    records = []
    for _ in range(count):
        ts = NOW - timedelta(seconds=rng.uniform(0, span.total_seconds()))
        status = rng.choice([200, 200, 200, 200, 429, 500, None])
        tokens = None if rng.random() < 0.1 else rng.randint(0, 5000)
        out = None if rng.random() < 0.1 else rng.randint(0, 2000)
        records.append(Record(
            request_id=uuid.uuid4().hex, ts=ts, duration_ms=rng.randint(1, 9000), provider=rng.choice(PROVIDERS),
            api=rng.choice(["openai-chat", "anthropic-messages"]), method="POST", path="/v1/chat/completions",
            model=rng.choice(MODELS), response_model=rng.choice(MODELS), key_id=rng.choice(KEYS),
            streaming=rng.random() < 0.5, status=status, error="upstream said no" if rng.random() < 0.1 else None,
            input_tokens=tokens, output_tokens=out, total_tokens=(tokens or 0) + (out or 0),
            cached_tokens=rng.choice([None, 0, rng.randint(0, 100)]), cache_write_tokens=rng.choice([None, 7]),
            reasoning_tokens=rng.choice([None, rng.randint(0, 50)]), cost_usd=random_cost(rng),
            request_body={"messages": [{"role": "user", "content": "hi"}]}, response_body={"ok": True},
        ))
    return records


def write(sink, records: list[Record]) -> None:
    sink.connect()
    try:
        for start in range(0, len(records), 97):
            sink.write([row_values(r, body_max_bytes=None) for r in records[start:start + 97]])
    finally:
        sink.close()


@pytest.fixture(scope="module")
def pg_table() -> Iterator[str]:
    table = f"llmp_rep_{secrets.token_hex(5)}"
    yield table
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        drop_calls_table(conn, table)


@pytest.fixture(scope="module")
def data(pg_table: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The same random rows in PostgreSQL (half before the rollup exists, half after) and SQLite."""
    rng = random.Random(20261123)
    records = random_records(rng, 1500)
    write(PostgresSink(PG_URL, pg_table), records[:700])
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        assert ensure_rollup(conn, pg_table)
        assert rollup_ready(conn, pg_table)
    write(PostgresSink(PG_URL, pg_table), records[700:])
    sqlite_path = tmp_path_factory.mktemp("reports") / "rows.db"
    write(SqliteSink(str(sqlite_path), "llm_requests"), records)
    return pg_table, sqlite_path


def sql_sums(table: str, query: UsageQuery) -> dict[tuple, dict[str, object]]:
    """The expected figures: plain SQL aggregates over the raw rows."""
    dims = []
    for field in query.group_by:
        if field == "day":
            dims.append("to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
        elif field == "hour":
            dims.append("to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00Z')")
        else:
            dims.append(DIMS[field])
    where, params = "ts >= %s AND ts < %s", [query.since, query.until]
    for name, column in (("key", "key_id"), ("model", "model"), ("provider", "provider")):
        if getattr(query.filters, name) is not None:
            where += f" AND {column} = %s"
            params.append(getattr(query.filters, name))
    select = ", ".join([*dims, "count(*)", "count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL)",
                        "coalesce(sum(input_tokens), 0)", "coalesce(sum(output_tokens), 0)",
                        "coalesce(sum(cached_tokens), 0)", "coalesce(sum(cache_write_tokens), 0)",
                        "coalesce(sum(reasoning_tokens), 0)", "coalesce(sum(cost_usd), 0)",
                        "count(*) FILTER (WHERE cost_usd IS NULL)"])
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(dims)))}" if dims else ""
    with psycopg.connect(PG_URL) as conn:
        rows = conn.execute(f"SELECT {select} FROM {table} WHERE {where}{group}", params).fetchall()
    names = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
             "reasoning_tokens", "cost_usd", "unpriced")
    expected = {}
    for row in rows:
        figures = dict(zip(names, row[len(dims):]))
        figures["cost_usd"] = money(figures["cost_usd"])
        expected[tuple(row[:len(dims)])] = {k: (v if k == "cost_usd" else int(v)) for k, v in figures.items()}
    return expected


def random_query(rng: random.Random) -> UsageQuery:
    since = NOW - timedelta(seconds=rng.uniform(3600, 3 * 86400))
    until = since + timedelta(seconds=rng.uniform(60, 3 * 86400))
    fields = rng.sample(["key", "model", "response_model", "provider", "api", "status", "day", "hour"],
                        rng.randint(0, 3))
    filters = Filters(key=rng.choice([None, None, "alice"]), provider=rng.choice([None, None, "openai"]))
    return UsageQuery(since, until, parse_group_by(",".join(fields)), filters)


def check(answer: dict, query: UsageQuery, expected: dict[tuple, dict[str, object]]) -> None:
    figures = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
               "reasoning_tokens", "cost_usd", "unpriced")
    if query.group_by:
        got = {tuple(g[f] for f in query.group_by): {k: g[k] for k in figures} for g in answer["groups"]}
        assert got == expected
        costs = [Decimal(g["cost_usd"]) for g in answer["groups"]]
        assert costs == sorted(costs, reverse=True)
    totals = {k: 0 for k in figures}
    total_cost = Decimal(0)
    for group in expected.values():
        for k in figures:
            if k == "cost_usd":
                total_cost += Decimal(group[k])
            else:
                totals[k] += group[k]
    totals["cost_usd"] = money(total_cost)
    assert answer["totals"] == totals


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("backend", ["postgres-rollup", "postgres-rows", "sqlite"])
def test_random_report_equals_sql_sums(data, backend, seed):
    table, sqlite_path = data
    rng = random.Random(seed)
    query = random_query(rng)
    if backend == "sqlite":
        reports = Reports(Database("sqlite", str(sqlite_path)), "llm_requests")
    else:
        reports = Reports(Database("postgresql", PG_URL), table)
    reports.connect()
    if backend == "postgres-rows":
        reports.rollup = False
    else:
        assert reports.rollup == (backend == "postgres-rollup")
    try:
        answer = reports.usage(query)
    finally:
        reports.close()
    check(answer, query, sql_sums(table, query))


def test_rollup_follows_updates_deletes_and_duplicate_replays(pg_table):
    table = pg_table + "_m"  # its own table: the other tests compare PostgreSQL with SQLite
    query = UsageQuery(NOW - timedelta(days=4), NOW + timedelta(hours=2), parse_group_by("key,model,hour"))
    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            assert ensure_rollup(conn, table)
        sink = PostgresSink(PG_URL, table)
        extra = random_records(random.Random(7), 300)
        write(sink, extra)
        sink.connect()
        sink.write([row_values(r, body_max_bytes=None) for r in extra[:20]], replay=True)  # skipped duplicates
        sink.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"UPDATE {table} SET cost_usd = cost_usd * 3, key_id = 'zed' WHERE id % 7 = 0")
            conn.execute(f"DELETE FROM {table} WHERE id % 11 = 0")
        reports = Reports(Database("postgresql", PG_URL), table)
        reports.connect()
        try:
            assert reports.rollup
            check(reports.usage(query), query, sql_sums(table, query))
        finally:
            reports.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {table}")
            assert conn.execute(f"SELECT count(*) FROM {table}_hourly").fetchone()[0] == 0
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            drop_calls_table(conn, table)


def test_requests_pages_newest_first_and_one_request_has_bodies(data):
    table, sqlite_path = data
    for reports in (Reports(Database("postgresql", PG_URL), table),
                    Reports(Database("sqlite", str(sqlite_path)), "llm_requests")):
        reports.connect()
        try:
            first = reports.requests(RequestsQuery(limit=7, filters=Filters(key="alice")))
            assert len(first["requests"]) == 7
            ids = [r["id"] for r in first["requests"]]
            assert ids == sorted(ids, reverse=True)
            assert all(r["key_id"] == "alice" for r in first["requests"])
            assert "request_body" not in first["requests"][0]
            second = reports.requests(RequestsQuery(limit=7, before=first["next_before"],
                                                    filters=Filters(key="alice")))
            assert max(r["id"] for r in second["requests"]) < min(ids)
            one = reports.request(first["requests"][0]["request_id"])
            assert one["request_body"] == {"messages": [{"role": "user", "content": "hi"}]}
            assert set(COLUMNS) <= set(one)
            assert reports.request("no-such-request") is None
        finally:
            reports.close()


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("3.6780E-4"), "0.0003678"), (Decimal("1E-7"), "0.0000001"), (Decimal("0E-10"), "0"),
    (Decimal("12.500"), "12.5"), (Decimal("100"), "100"), (None, "0"),
])
def test_money_is_exact_text_without_exponent(value, text):
    assert money(value) == text


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_report_command_prints_the_usage_apis_figures(data, backend, capsys):
    from llm_proxy.cli import main
    table, sqlite_path = data
    db = ["--db", PG_URL, "--table", table] if backend == "postgres" else ["--db", f"sqlite:///{sqlite_path}"]
    assert main(["report", *db, "--since", "4d", "--by", "key,model", "--format", "json"]) == 0
    answer = __import__("json").loads(capsys.readouterr().out)
    query = UsageQuery(datetime.fromisoformat(answer["since"]), datetime.fromisoformat(answer["until"]),
                       ("key", "model"))
    check(answer, query, sql_sums(table, query))
    assert main(["report", *db, "--since", "4d", "--by", "provider", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "provider,requests,errors,input_tokens,output_tokens,cached_tokens,cache_write_tokens," \
                       "reasoning_tokens,cost_usd,unpriced"
    assert lines[-1].startswith("TOTAL,") and lines[-1].split(",")[-2] == answer["totals"]["cost_usd"]
    assert main(["report", *db, "--since", "4d"]) == 0
    assert answer["totals"]["cost_usd"] in capsys.readouterr().out
    assert main(["report", *db, "--by", "week"]) == 1
    assert capsys.readouterr().err.startswith("llm-proxy: --by: 'week' is not one of key, model")
