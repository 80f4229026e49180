"""Async jobs across a kill -9, and budget alerts from two proxies sharing one database."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, Rows, new_key, scenario, write_providers
from .jobs_support import SECRET, Receiver, drop_schema, schema_url, submit, verify

TABLE = "llm_requests"


@pytest.fixture
def db(pg_url: str) -> Iterator[str]:
    schema, url = schema_url(pg_url)
    yield url
    drop_schema(pg_url, schema)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def args(upstream: FakeUpstream | Stall, tmp: Path, db: str, *extra: str) -> list[str]:
    tmp.mkdir(exist_ok=True)
    providers = write_providers(tmp / "providers.toml", upstream.url)
    return ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}", "--set", f"llm_db={db}",
            "--set", f"llm_table={TABLE}", "--set", f"llm_webhook_secret={SECRET}",
            "--set", "llm_webhook_allow_private=true", "--set", "llm_webhook_retry_ms=5", *extra]


def statuses(db: str) -> dict[str, str]:
    with psycopg.connect(db) as conn:
        return dict(conn.execute("SELECT id, status FROM llm_jobs").fetchall())


class Stall:
    """An upstream that accepts connections and never answers: calls to it stay in flight."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_kill_9_with_50_queued_and_5_running(start_proxy: ProxyFactory, upstream: FakeUpstream, db: str,
                                             receiver: Receiver, tmp_path: Path) -> None:
    stall = Stall()
    node = ["--set", "llm_jobs_concurrent=5", "--set", "llm_jobs_node=durable"]
    # First life: the provider never answers, so five jobs stay running and fifty queued.
    first = start_proxy(args(stall, tmp_path / "first", db, *node))
    first.wait_for_log("llm-proxy writing rows to")
    key = new_key()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: submit(first.url, key, webhook=f"{receiver.url}/durable").json()["id"],
                            range(55)))
    deadline = time.monotonic() + 10
    while sorted(statuses(db).values()).count("running") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = statuses(db)
    assert sorted(before.values()) == ["queued"] * 50 + ["running"] * 5, before
    first.stop(signal.SIGKILL)
    stall.close()
    # Second life: the same node, now with a provider that answers.
    options = args(upstream, tmp_path / "second", db, *node)
    second = start_proxy(options)
    deadline = time.monotonic() + 40
    while any(s not in ("completed", "failed") for s in statuses(db).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(statuses(db).values()) == {"completed"}, statuses(db)
    with psycopg.connect(db) as conn:
        jobs = {job_id: (rerun, request_id, json.loads(attempts)) for job_id, rerun, request_id, attempts
                in conn.execute("SELECT id, rerun, request_id, attempts FROM llm_jobs").fetchall()}
    reruns = {job_id for job_id, (rerun, _, _) in jobs.items() if rerun}
    assert reruns == {job_id for job_id, status in before.items() if status == "running"}
    for job_id in reruns:
        interrupted, again = jobs[job_id][2]
        assert "interrupted" in interrupted["outcome"] and not interrupted["rerun"]
        assert again["rerun"] and again["outcome"] == "HTTP 200" and again["request_id"] == jobs[job_id][1]
    # One row per finished call, each linked to its job; the killed calls left none.
    rows = Rows(db, TABLE).wait(key, 55, timeout=20)
    assert {r["request_id"] for r in rows} == {request_id for _, request_id, _ in jobs.values()}
    # A re-run's row says so: its first attempt is the run the kill cut off (possibly billed).
    rerun_rows = {jobs[job_id][1] for job_id in reruns}
    for row in rows:
        marked = [a for a in row["attempts"] or [] if a.get("job")]
        if row["request_id"] in rerun_rows:
            assert len(marked) == 1 and "may have billed" in marked[0]["error"], row["attempts"]
        else:
            assert marked == [], row["attempts"]
    # Every webhook arrived at least once (receivers dedupe by id), each correctly signed.
    deadline = time.monotonic() + 20
    while {h.json["id"] for h in receiver.on("/durable")} != set(ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    hits = receiver.on("/durable")
    assert {h.json["id"] for h in hits} == set(ids)
    assert all(verify(SECRET, h.body, h.headers["llm-signature"]) for h in hits)
    assert "5 run once more (marked rerun)" in second.log


def test_budget_alerts_once_per_threshold_across_two_proxies(upstream: FakeUpstream, db: str, receiver: Receiver,
                                                             tmp_path: Path) -> None:
    from llm_proxy.keys import admin
    keys_file = tmp_path / "keys.toml"
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M tokens; 1000 + 1000 tokens cost $0.00075 a call.
    _, secret = admin.create_key(keys_file, "team", admin.parse_changes({"budget": "0.0025"}))
    options = args(upstream, tmp_path, db, "--set", f"llm_keys={keys_file}", "--set", "llm_budget_refresh=1",
                   "--set", f"llm_alert_webhook={receiver.url}/alerts")
    proxies = [Proxy(options, confdir=tmp_path / f"conf-{n}") for n in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both at once: half the wait
        try:
            list(pool.map(lambda p: p.start().wait_for_log("llm-proxy writing rows to"), proxies))
            check_alerts(*proxies, secret, receiver, db)
        finally:
            list(pool.map(lambda p: p.stop(), proxies))


def check_alerts(a: Proxy, b: Proxy, secret: str, receiver: Receiver, db: str) -> None:
    # 30%, 60% (50 from b), 90% (a: 50 again, which the table refuses, and 80), 120% (b: 80 refused, 100)
    for proxy in (a, b, a, b):
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=secret, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers=scenario(input=1000, output=1000))
        time.sleep(1.6)  # the writer stores the row and both proxies re-read the spend
    hits = receiver.wait("/alerts", 3)
    time.sleep(0.5)
    hits = receiver.on("/alerts")
    assert sorted(h.json["threshold"] for h in hits) == [50, 80, 100]
    assert all(verify(SECRET, h.body, h.headers["llm-signature"]) for h in hits)
    first = min(hits, key=lambda h: h.json["threshold"]).json
    assert first == {"type": "budget.threshold", "key": "team", "threshold": 50, "spend_usd": "0.0015",
                     "budget_usd": "0.0025", "period": "monthly"}
    senders = {h.json["threshold"]: h for h in hits}
    assert senders[80].json["spend_usd"] == "0.00225" and senders[100].json["spend_usd"] == "0.003"
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM llm_budget_alerts").fetchone() == (3,)


def sqlite_jobs(path: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(path) as conn:
        return {job_id: (status, error) for job_id, status, error
                in conn.execute("SELECT id, status, error FROM llm_jobs").fetchall()}


def test_passthrough_key_kept_in_memory_only_ends_failed_after_a_restart(
        start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Without llm_webhook_secret a passthrough job's API key is never stored: after a crash the
    job cannot run again, and says so instead of waiting forever."""
    stall = Stall()
    db = tmp_path / "jobs.db"

    def options(target: FakeUpstream | Stall, where: str) -> list[str]:
        (tmp_path / where).mkdir()
        providers = write_providers(tmp_path / where / "providers.toml", target.url)
        return ["--mode", f"reverse:{target.url}@0", "--set", f"llm_providers={providers}",
                "--set", f"llm_db=sqlite:///{db}", "--set", "llm_jobs_concurrent=1", "--set", "llm_jobs_node=mem"]

    first = start_proxy(options(stall, "first"))
    key = new_key()
    ids = [submit(first.url, key).json()["id"] for _ in range(2)]
    deadline = time.monotonic() + 10
    while sorted(s for s, _ in sqlite_jobs(db).values()) != ["queued", "running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    stall.close()
    second = start_proxy(options(upstream, "second"))
    deadline = time.monotonic() + 15
    while any(s != "failed" for s, _ in sqlite_jobs(db).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    ends = sqlite_jobs(db)
    assert set(ends) == set(ids)
    for status, error in ends.values():
        assert status == "failed" and "kept only in memory" in (error or "") and "submit the call again" in error
    assert key not in db.read_bytes().decode("latin-1")  # the key never reached the table
    assert httpx.get(f"{second.url}/_llm/jobs/{ids[1]}").json()["status"] == "failed"


def test_regular_mode_job_runs_through_the_proxy(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """An HTTPS_PROXY client's job goes to the provider's real host over TLS, and is one row."""
    with FakeUpstream(tls=True).start() as tls_upstream:
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "{tls_upstream.url}"\nformat = "openai"\n')
        db = tmp_path / "rows.db"
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db=sqlite:///{db}", "--set", "ssl_insecure=true"])
        trust = ssl.create_default_context(cafile=proxy.confdir / "mitmproxy-ca-cert.pem")
        with httpx.Client(proxy=proxy.url, verify=trust) as client:
            accepted = client.post(f"{tls_upstream.url}/v1/chat/completions",
                                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                                   headers={"authorization": "Bearer sk-regular", "prefer": "respond-async"})
            assert accepted.status_code == 202, accepted.text
            status_url = f"{tls_upstream.url}{accepted.headers['location']}"  # answered by the proxy itself
            deadline = time.monotonic() + 15
            while (done := client.get(status_url).json())["status"] not in ("completed", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert done["status"] == "completed", done
        assert [r.headers["authorization"] for r in tls_upstream.requests] == ["Bearer sk-regular"]
        assert "x-llm-proxy-job" not in tls_upstream.requests[0].headers
        proxy.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT request_id, status FROM llm_requests").fetchall() == [(done["request_id"], 200)]
