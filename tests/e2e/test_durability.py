"""Nothing lost: database outages through a cuttable TCP relay, SIGTERM and SIGKILL under
load, a bad row, a full journal, and the db/doctor commands."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from tests.fakes.tcprelay import TcpRelay
from tests.fakes.upstream import FakeUpstream

from .conftest import PG_URL, Proxy, ProxyFactory, drop_table, write_providers

CLI = Path(sys.executable).with_name("llm-proxy")


@pytest.fixture
def relay() -> Iterator[TcpRelay]:
    with TcpRelay("127.0.0.1", 5432).start() as r:
        yield r


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    name = "llmp_test_dur_" + os.urandom(4).hex()
    yield name
    drop_table(pg_url, name)


def relayed_url(relay: TcpRelay) -> str:
    return f"postgresql://postgres@127.0.0.1:{relay.port}/test?connect_timeout=2"


def start(start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path, db: str, table: str,
          *extra: str) -> Proxy:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    return start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                        "--set", f"llm_db={db}", "--set", f"llm_table={table}",
                        "--set", f"llm_journal={tmp_path / 'journal'}", *extra])


def call(proxy: Proxy, **fake: object) -> str:
    """One chat call; returns the request id the upstream saw (x-request-id) to count rows by."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-durable", max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-scenario": json.dumps(fake)})
    assert reply.status_code == 200
    return reply.headers["x-request-id"]


def health(proxy: Proxy) -> dict:
    return httpx.get(f"{proxy.url}/_llm/health").json()


def wait_health(proxy: Proxy, predicate, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = health(proxy)
        if predicate(state):
            return state
        assert time.monotonic() < deadline, f"health never got there: {state}"
        time.sleep(0.1)


def count_rows(table: str) -> tuple[int, int]:
    """(rows, distinct request ids) in the table."""
    with psycopg.connect(PG_URL) as conn:
        return conn.execute(f"SELECT count(*), count(DISTINCT request_id) FROM {table}").fetchone()


def test_outage_under_load_loses_nothing_and_fails_no_call(
    relay: TcpRelay, table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, relayed_url(relay), table)
    proxy.wait_for_log("llm-proxy writing rows to")
    done: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                done.append(call(proxy))
            except BaseException as e:  # any failed client call fails the test
                failures.append(e)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    relay.cut()
    outage = wait_health(proxy, lambda s: s["database"] == "down" and s["journal_bytes"] > 0)
    assert outage["status"] == "degraded"
    time.sleep(3)
    relay.restore()
    time.sleep(1.5)
    stop.set()
    for w in workers:
        w.join()
    assert not failures and len(done) > 50
    wait_health(proxy, lambda s: s["database"] == "up" and s["journal_bytes"] == 0 and s["writer"]["queue_depth"] == 0)
    assert count_rows(table) == (len(done), len(done))  # every call, exactly once
    assert "cannot write to postgresql" in proxy.log and "journal replayed" in proxy.log


def test_sigterm_under_load_flushes_every_answered_call(
    table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path, pg_url: str
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, pg_url, table)
    answered: list[str] = []

    def one(_: int) -> None:
        try:
            answered.append(call(proxy, first_delay=0.05))
        except (openai.APIError, AssertionError):
            pass  # calls cut off by the shutdown itself

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        time.sleep(2.0)
        proxy.stop(signal.SIGTERM)
        concurrent.futures.wait(futures)
    assert len(answered) >= 10
    rows, distinct = count_rows(table)
    assert rows == distinct and rows >= len(answered)


def test_sigkill_loses_only_the_batch_in_flight_and_the_journal_replays_at_start(
    relay: TcpRelay, table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, relayed_url(relay), table)
    proxy.wait_for_log("llm-proxy writing rows to")
    relay.cut()
    ids = [call(proxy) for _ in range(30)]
    wait_health(proxy, lambda s: s["writer"]["rows_journaled"] == 30)  # fsynced in the journal
    proxy.stop(signal.SIGKILL)
    relay.restore()
    assert count_rows(table) == (0, 0)
    again = start(start_proxy, upstream, tmp_path, relayed_url(relay), table)
    wait_health(again, lambda s: s["journal_bytes"] == 0 and s["database"] == "up")
    assert count_rows(table) == (len(ids), len(ids))


def test_a_bad_row_is_set_aside_and_the_rest_of_its_batch_written(
    table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path, pg_url: str
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, pg_url, table)
    proxy.wait_for_log("llm-proxy writing rows to")
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a rule of the database's owner
        conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT small_calls CHECK (input_tokens < 1000)")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # one batch, one row PostgreSQL refuses
        list(pool.map(lambda i: call(proxy, input=5000 if i == 3 else 10), range(6)))
    state = wait_health(proxy, lambda s: s["writer"]["rows_written"] + s["writer"]["dead_letters"] == 6)
    assert (state["writer"]["rows_written"], state["writer"]["dead_letters"]) == (5, 1)
    assert count_rows(table) == (5, 5)
    [letter] = (tmp_path / "journal" / "dead-letter.jsonl").read_text().splitlines()
    entry = json.loads(letter)
    assert entry["reason"] == 'CheckViolation: SQLSTATE 23514: new row for relation "..." violates check constraint "..."'
    assert entry["row"]["input_tokens"] == 5000
    assert state["writer"]["last_error"] == entry["reason"] and state["status"] == "ok"


def test_a_full_journal_drops_new_rows_with_a_warning_and_keeps_serving(
    relay: TcpRelay, table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, relayed_url(relay), table, "--set", "llm_journal_max_mb=1")
    proxy.wait_for_log("llm-proxy writing rows to")
    relay.cut()
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-full", max_retries=0)
    for _ in range(25):  # ~100 KB of body each: past 1 MB
        assert client.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "x" * 100_000}]).usage
    state = wait_health(proxy, lambda s: s["writer"]["rows_dropped"] > 0)
    assert state["journal_bytes"] <= 1 << 20
    assert "reached its cap of 1 MB" in proxy.log


def test_db_replay_and_doctor(relay: TcpRelay, table: str, upstream: FakeUpstream, start_proxy: ProxyFactory,
                              tmp_path: Path, pg_url: str) -> None:
    proxy = start(start_proxy, upstream, tmp_path, relayed_url(relay), table)
    proxy.wait_for_log("llm-proxy writing rows to")
    relay.cut()
    ids = [call(proxy) for _ in range(7)]
    assert proxy.stop() == 0  # SIGTERM: queued rows go to the journal
    journal = tmp_path / "journal"
    flags = ["--db", pg_url, "--table", table, "--journal", str(journal)]
    doctor = subprocess.run([str(CLI), "doctor", *flags], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1 and "not yet in the database" in doctor.stdout
    replay = subprocess.run([str(CLI), "db", "replay", *flags], capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "7 rows written" in replay.stdout and count_rows(table) == (len(ids), len(ids))
    doctor = subprocess.run([str(CLI), "doctor", *flags], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0 and "all good" in doctor.stdout


def test_db_init_applies_the_schema(table: str, pg_url: str) -> None:
    done = subprocess.run([str(CLI), "db", "init", "--db", pg_url, "--table", table],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"table {table}" in done.stdout
    assert count_rows(table) == (0, 0)


def test_health_is_answered_by_the_addon_and_never_forwarded(proxy: Proxy, upstream: FakeUpstream) -> None:
    before = len(upstream.requests)
    state = httpx.get(f"{proxy.url}/_llm/health").json()
    assert state["database"] == "up" and set(state["writer"]) >= {"queue_depth", "rows_written"}
    assert httpx.get(f"{proxy.url}/_llm/nothing").status_code == 404
    assert len(upstream.requests) == before
