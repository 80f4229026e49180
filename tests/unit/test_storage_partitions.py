"""PostgreSQL storage: parts read back exactly through the view, monthly partitions made ahead and
dropped by prune, body retention, the hourly rollup exact throughout, an older table migrated.

Each test uses tables of its own in the server at LLM_PROXY_TEST_PG, dropped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.storage import agent_session, records
from tests.unit.test_storage_bodies import bodies_st, dumps
from llm_proxy.cli import main as cli
from llm_proxy.control.reports import drop_calls_table, ensure_rollup, rollup_ready
from llm_proxy.record import COLUMNS
from llm_proxy.storage import bodies
from llm_proxy.storage.dsn import parse_db_url
from llm_proxy.storage.migrate import migrate
from llm_proxy.storage.partitions import ensure_month, month_start, next_month, partition_name, partitioned, partitions
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.retention import Retention
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.schema import schema_for
from llm_proxy.storage.sqlite import SqliteSink

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CLI = Path(sys.executable).with_name("llm-proxy")
SESSION = list(agent_session(6))

# The table as versions before monthly partitions made it (schema.sql of then).
OLD_DDL = """CREATE TABLE {t} (id bigserial PRIMARY KEY, request_id text UNIQUE NOT NULL, ts timestamptz NOT NULL,
    duration_ms integer, ttft_ms integer, provider text, api text, method text, path text, upstream_url text,
    model text, response_model text, key_id text, streaming boolean, status integer, error text,
    input_tokens integer, output_tokens integer, total_tokens integer, cached_tokens integer,
    cache_write_tokens integer, reasoning_tokens integer, cost_usd numeric, attempts jsonb, fallback_from text,
    request_body jsonb, response_body jsonb, client_addr text);
CREATE INDEX {t}_ts_idx ON {t} (ts); CREATE INDEX {t}_key_ts_idx ON {t} (key_id, ts);"""


@pytest.fixture
def table() -> Iterator[str]:
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is needed ({PG_URL}): {e}", pytrace=False)
    name = "llmp_parts_" + secrets.token_hex(4)
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        drop_calls_table(conn, name)
        conn.execute(f"DROP TABLE IF EXISTS {name}_unpartitioned CASCADE")


def write(table: str, start: datetime, session: list[tuple[bytes, bytes]] = SESSION) -> list[str]:
    sink = PostgresSink(PG_URL, table)
    try:
        sink.connect()
        rows = [row_values(r, body_max_bytes=None) for r in records(session, start)]
        for row in rows:
            sink.write([row])
    finally:
        sink.close()
    return [row[COLUMNS.index("request_id")] for row in rows]


def full_bodies(conn: psycopg.Connection, table: str) -> dict[str, tuple[str | None, object]]:
    """request_id -> the view's request body as text (json::text is the stored text, unchanged), and the
    response body's value (small bodies are plain jsonb, as before: the same value, jsonb's key order)."""
    return {rid: (a, b) for rid, a, b in conn.execute(
        f"SELECT request_id, request_body::text, response_body FROM {table}_full")}


def exact(session: list[tuple[bytes, bytes]]) -> list[tuple[str, object]]:
    return [(a.decode(), json.loads(b)) for a, b in session]


def rollup_agrees(conn: psycopg.Connection, table: str) -> None:
    """The hourly and daily rollups equal the same sums computed from the rows."""
    from_rows = conn.execute(
        f"SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*), sum(cost_usd) "
        f"FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
    kept = conn.execute(f"SELECT hour, sum(requests), sum(cost_usd) FROM {table}_hourly GROUP BY 1 ORDER BY 1"
                        ).fetchall()
    assert kept == from_rows
    from_rows = conn.execute(
        f"SELECT date_trunc('day', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*), sum(cost_usd) "
        f"FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
    kept = conn.execute(f"SELECT day, sum(requests), sum(cost_usd) FROM {table}_daily GROUP BY 1 ORDER BY 1"
                        ).fetchall()
    assert kept == from_rows


def test_view_reads_back_exact_bodies_and_parts_are_stored_once(table) -> None:
    ids = write(table, datetime.now(UTC))
    write(table, datetime.now(UTC))  # the same conversation again (a second proxy, or a retry loop)
    with psycopg.connect(PG_URL) as conn:
        back = full_bodies(conn, table)
        assert [back[rid] for rid in ids] == exact(SESSION)
        assert conn.execute(f"SELECT count(*) FROM {table}_bodies").fetchone()[0] == 3 + 2 * 5
        raw = conn.execute(f"SELECT request_body ->> 0 FROM {table} LIMIT 1").fetchone()[0]
        assert raw == "llm-body/1"  # the row keeps a reference document
        parsed = conn.execute(f"SELECT request_body FROM {table}_full WHERE request_id = %s", (ids[0],)).fetchone()[0]
        assert list(parsed) == ["model", "max_tokens", "system", "tools", "messages", "temperature", "stream",
                                "metadata"]  # json, not jsonb: the client's key order


def test_partitions_made_ahead_with_a_default_and_late_rows_moved_out_of_it(table) -> None:
    now = datetime.now(UTC)
    old = month_start(now - timedelta(days=100))
    write(table, old + timedelta(days=3))  # no partition for that month: the default takes the rows
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        assert partitioned(conn, table)
        names = [p.name for p in partitions(conn, table)]
        this = month_start(now)
        assert names == [partition_name(table, this), partition_name(table, next_month(this)), f"{table}_default"]
        assert conn.execute(f"SELECT count(*) FROM {table}_default").fetchone()[0] == len(SESSION)
        assert ensure_rollup(conn, table) and rollup_ready(conn, table)  # transition-table triggers on the parent
        rollup_agrees(conn, table)
        with conn.transaction():
            assert ensure_month(conn, table, old)
        assert conn.execute(f"SELECT count(*) FROM {table}_default").fetchone()[0] == 0
        assert conn.execute(f"SELECT count(*) FROM {partition_name(table, old)}").fetchone()[0] == len(SESSION)
        rollup_agrees(conn, table)  # rows moved between partitions: counted once still
        write(table, now)
        rollup_agrees(conn, table)


def test_prune_drops_old_months_whole_and_frees_parts_only_old_rows_used(table) -> None:
    now = datetime.now(UTC)
    old = month_start(now - timedelta(days=200))
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        PostgresSink(PG_URL, table).connect()
        with conn.transaction():
            ensure_month(conn, table, old)
        ensure_rollup(conn, table)
    other = list(agent_session(3, seed=99))  # a conversation only old rows hold
    old_ids = write(table, old + timedelta(days=1), other) + write(table, old + timedelta(days=2))
    middle = write(table, now - timedelta(days=40), SESSION[:2])  # default or this month: deleted row by row
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"UPDATE {table}_bodies SET seen = %s", ((old + timedelta(days=2)).date(),))
    new_ids = write(table, now)  # raises `seen` of the parts the new rows use
    with Retention(parse_db_url(PG_URL), table) as retention:
        done = retention.prune(now - timedelta(days=30))
    assert done.partitions == [partition_name(table, old)]
    assert done.rows == len(old_ids) + len(middle)
    assert done.parts == 3 + 2 * 2  # the other conversation's parts
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        back = full_bodies(conn, table)
        assert sorted(back) == sorted(new_ids)
        assert [back[rid] for rid in new_ids] == exact(SESSION)
        rollup_agrees(conn, table)
        assert conn.execute(f"SELECT count(*) FROM {table}_hourly WHERE hour < %s", (now - timedelta(days=30),)
                            ).fetchone()[0] == 0


def test_body_retention_keeps_rows_drops_bodies_and_unused_parts(table) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        PostgresSink(PG_URL, table).connect()
        ensure_rollup(conn, table)
    old_ids = write(table, now - timedelta(days=40), list(agent_session(3, seed=7)))
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"UPDATE {table}_bodies SET seen = %s", ((now - timedelta(days=40)).date(),))
    new_ids = write(table, now)
    with Retention(parse_db_url(PG_URL), table) as retention:
        done = retention.drop_bodies(now - timedelta(days=30))
    assert (done.bodies, done.parts) == (len(old_ids), 3 + 2 * 2)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        back = full_bodies(conn, table)
        assert all(back[rid] == (None, None) for rid in old_ids)
        assert [back[rid] for rid in new_ids] == exact(SESSION)
        rollup_agrees(conn, table)


def test_an_older_unpartitioned_table_keeps_working_and_migrates(table, capsys) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(OLD_DDL.format(t=table))
    before = write(table, now - timedelta(days=70))  # the proxy of this version on the old table
    cli(["doctor", "--db", PG_URL, "--table", table])
    assert f"table {table} is not partitioned by month" in capsys.readouterr().out
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        assert not partitioned(conn, table)
        ensure_rollup(conn, table)
        ids = dict(conn.execute(f"SELECT request_id, id FROM {table}").fetchall())
        assert migrate(conn, table) == len(before)
        assert migrate(conn, table) is None  # once is enough
        ensure_rollup(conn, table)
        assert partitioned(conn, table) and rollup_ready(conn, table)
        assert dict(conn.execute(f"SELECT request_id, id FROM {table}").fetchall()) == ids
    after = write(table, now)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        new = dict(conn.execute(f"SELECT request_id, id FROM {table} WHERE request_id = ANY(%s)", (after,)))
        assert min(new.values()) > max(ids.values())
        back = full_bodies(conn, table)
        assert [back[rid] for rid in before + after] == exact(SESSION) * 2
        rollup_agrees(conn, table)


def test_prune_cli_on_postgres_and_sqlite(table, tmp_path, capsys) -> None:
    now = datetime.now(UTC)
    write(table, now - timedelta(days=100), SESSION[:2])
    write(table, now, SESSION[:1])
    out = subprocess.run([CLI, "db", "prune", "--older-than", "90d", "--db", PG_URL, "--table", table],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"table {table}: 2 rows older than" in out.stdout
    with psycopg.connect(PG_URL) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1
    path = tmp_path / "x.db"
    sink = SqliteSink(str(path), "llm_requests")
    sink.connect()
    for record in records(SESSION[:3], now - timedelta(days=100)):
        sink.write([row_values(record, body_max_bytes=None)])
    sink.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE llm_requests_bodies SET seen = '2000-01-01'")
    conn.close()
    sink.connect()  # a new writer: it raises `seen` of the parts it uses
    sink.write([row_values(records(SESSION[:1], now)[0], body_max_bytes=None)])
    sink.close()
    # In-process from here on: the same entry point as the command, without a second start-up.
    assert cli(["db", "prune", "--older-than", "30d", "--bodies-only", "--db", f"sqlite:///{path}"]) == 0
    out = capsys.readouterr().out
    assert "bodies of 3 rows older than" in out and "4 unused body parts freed" in out
    assert cli(["db", "prune", "--older-than", "30d", "--db", f"sqlite:///{path}"]) == 0
    assert "3 rows older than" in capsys.readouterr().out
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT request_body FROM llm_requests_full").fetchall() == [(SESSION[0][0].decode(),)]
    conn.close()
    assert cli(["db", "prune", "--older-than", "soon", "--db", f"sqlite:///{path}"]) == 2
    assert "--older-than" in capsys.readouterr().err


def test_a_busy_table_delays_the_partition_not_the_rows(table, caplog) -> None:
    """Making a partition waits for the parent's lock at most briefly; rows go to the default meanwhile."""
    now = datetime.now(UTC)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(schema_for(table).encode())
    blocker = psycopg.connect(PG_URL)
    try:
        blocker.execute(f"SELECT count(*) FROM {table}")  # a long report: its lock is held until it ends
        sink = PostgresSink(PG_URL, table)
        sink.connect()
        sink.write([row_values(r, body_max_bytes=None) for r in records(SESSION[:2], now)])
        assert "could not make next month's partition" in caplog.text
    finally:
        blocker.close()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}_default").fetchone()[0] == 2
        sink._ahead_retry = 0.0  # as after PARTITION_RETRY seconds
        sink.write([row_values(r, body_max_bytes=None) for r in records(SESSION[2:3], now)])
        sink.close()
        assert conn.execute(f"SELECT count(*) FROM {table}_default").fetchone()[0] == 0
        assert conn.execute(f"SELECT count(*) FROM {partition_name(table, month_start(now))}").fetchone()[0] == 3


def test_bench_storage_measures_before_and_after() -> None:
    from bench.storage import measure_postgres, measure_sqlite

    session = list(agent_session(8))
    end_to_end = sum(len(a) + len(b) for a, b in session)
    for measure in (lambda split: measure_postgres(PG_URL, session, split=split),
                    lambda split: measure_sqlite(session, split=split)):
        before, after = measure(False), measure(True)
        assert sum(after.values()) < sum(before.values()) < 2 * end_to_end


@pytest.fixture(scope="module")
def property_table() -> Iterator[str]:
    name = "llmp_parts_prop_" + secrets.token_hex(4)
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        drop_calls_table(conn, name)


@settings(max_examples=25)
@given(st.lists(st.tuples(bodies_st, st.integers(0, 3)), min_size=1, max_size=3))
def test_postgres_view_rebuilds_any_stored_body_exactly(property_table, cases) -> None:
    saved = bodies.SPLIT_MIN_CHARS
    bodies.SPLIT_MIN_CHARS = 0
    sink = PostgresSink(PG_URL, property_table)
    try:
        rows = [row_values(r, body_max_bytes=None) for r in records(
            [(dumps(pairs, style).encode(), b"{}") for pairs, style in cases])]
        sink.write(rows)
    finally:
        bodies.SPLIT_MIN_CHARS = saved
        sink.close()
    ids = [row[COLUMNS.index("request_id")] for row in rows]
    with psycopg.connect(PG_URL) as conn:
        back = dict(conn.execute(f"SELECT request_id, request_body::text FROM {property_table}_full "
                                 "WHERE request_id = ANY(%s)", (ids,)).fetchall())
    assert [back[i] for i in ids] == [row[COLUMNS.index("request_body")] for row in rows]
