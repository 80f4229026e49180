"""Many proxies, one truth: three mitmdump proxies on one PostgreSQL (keys) and one Redis (limits).

The module's proxies share a schema of their own (search_path in the database URL:
its llm_requests and llm_keys) and a Redis key prefix of their own, and reach Redis
through a TCP relay so the last test can cut it. Keys are made with the same store
code the CLI runs (keys.admin on a DbStore); one test runs the CLI itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import redis

from llm_proxy.keys import admin
from llm_proxy.keys.dbstore import DbStore
from tests.e2e.conftest import BIN, Proxy, Rows, scenario, write_providers
from tests.fakes.tcprelay import TcpRelay
from tests.fakes.upstream import FakeUpstream

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
MODEL = "cluster-probe"
# $10 per 1M input, $100 per 1M output: 25 input + 5 output tokens cost exactly $0.00075.
PRICING = f'[openai]\n"{MODEL}" = {{ input = 10.0, output = 100.0 }}\n'
PROBE_COST = Decimal("0.00075")


@dataclass
class Cluster:
    proxies: list[Proxy]
    db_url: str
    store: DbStore
    rows: Rows
    relay: TcpRelay
    prefix: str
    upstream: FakeUpstream
    providers: Path
    pricing: Path

    def key(self, prefix: str, **limits: Any) -> str:
        """A new key in the database (what `llm-proxy keys --db URL create` does); its secret."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        _, secret = admin.create_key(self.store, name, admin.parse_changes(limits))
        self.wait_live(secret)
        return secret

    def wait_live(self, secret: str, timeout: float = 5.0) -> None:
        """Until every proxy knows the key (they poll the table every 0.25 s). Asks /_llm/api/me,
        which a key may call and which counts against none of its limits."""
        deadline = time.monotonic() + timeout
        for proxy in self.proxies:
            while httpx.get(f"{proxy.url}/_llm/api/me", headers={"authorization": f"Bearer {secret}"},
                            timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "a key was not live on every proxy in time"
                time.sleep(0.05)


def _status(proxy: Proxy, secret: str, **kwargs: Any) -> int:
    fake = kwargs.pop("fake", {})
    response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=10,
                          headers={"authorization": f"Bearer {secret}", **scenario(**fake)},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs})
    return response.status_code


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    schema = f"llmc_{secrets.token_hex(5)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    db_url = f"{pg_url}?options=-csearch_path%3D{schema}"
    prefix = f"llmp-test-{secrets.token_hex(4)}:"
    relay = TcpRelay(REDIS_HOST, REDIS_PORT).start()
    providers = write_providers(tmp / "providers.toml", "http://placeholder")
    pricing = tmp / "pricing.toml"
    pricing.write_text(PRICING)
    proxies: list[Proxy] = []
    with FakeUpstream().start() as upstream:
        providers.write_text(providers.read_text().replace("http://placeholder", upstream.url).replace(
            "[providers.openai]\n", '[providers.openai]\napi_key_env = "OPENAI_API_KEY"\n'))
        args = ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                "--set", f"llm_pricing={pricing}", "--set", f"llm_db={db_url}", "--set", "llm_keys=db",
                "--set", f"llm_redis=redis://127.0.0.1:{relay.port}/0", "--set", f"llm_redis_prefix={prefix}",
                "--set", "llm_max_concurrent=4", "--set", "llm_queue_timeout=20", "--set", "llm_budget_refresh=1"]
        try:
            def start(i: int) -> Proxy:
                return Proxy(args, confdir=tmp / f"conf{i}", env={"OPENAI_API_KEY": "sk-real-cluster"}).start()

            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                proxies.extend(pool.map(start, range(3)))
            yield Cluster(proxies, db_url, DbStore(db_url), Rows(db_url, "llm_requests"), relay, prefix, upstream,
                          providers, pricing)
        finally:
            for proxy in proxies:
                proxy.stop()
            relay.stop()
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
            leftovers = list(client.scan_iter(match=prefix + "*"))
            if leftovers:
                client.delete(*leftovers)
            client.close()


def spread(cluster: Cluster, secret: str, count: int, **call: Any) -> list[Any]:
    """`count` concurrent chat calls with the openai SDK, round-robin over the proxies.

    Each result is the completion, or the SDK's exception (APIStatusError) for a refusal.
    """
    fake = call.pop("fake", {})

    async def run() -> list[Any]:
        clients = [openai.AsyncOpenAI(base_url=f"{p.url}/v1", api_key=secret, max_retries=0, timeout=30)
                   for p in cluster.proxies]

        async def one(i: int) -> Any:
            try:
                return await clients[i % len(clients)].chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers=scenario(**fake),
                    **call)
            except openai.APIStatusError as e:
                return e

        try:
            return await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            for client in clients:
                await client.close()

    return asyncio.run(run())


def refusals(results: list[Any]) -> list[openai.APIStatusError]:
    return [r for r in results if isinstance(r, openai.APIStatusError)]


def test_rpm_is_exact_across_three_proxies(cluster: Cluster) -> None:
    secret = cluster.key("rpm", rpm=30)
    results = spread(cluster, secret, 100)
    refused = refusals(results)
    outcomes = Counter((e.status_code, e.code) for e in refused)
    redis_log = [line for p in cluster.proxies for line in p.log.splitlines() if "Redis" in line]
    assert len(results) - len(refused) == 30, (outcomes, redis_log)
    assert outcomes == {(429, "rate_limit_exceeded"): 70}
    for e in refused:  # the provider's own error shape, as the SDK reads it
        assert e.status_code == 429 and e.code == "rate_limit_exceeded"
        assert e.body["type"] == "rate_limit_exceeded" or e.type == "rate_limit_exceeded"
        assert e.response.headers["x-ratelimit-limit-requests"] == "30"
        assert 1 <= int(e.response.headers["retry-after"]) <= 60


def test_parallel_holds_across_proxies(cluster: Cluster) -> None:
    secret = cluster.key("par", parallel=3)
    cluster.upstream.max_active = 0
    results = spread(cluster, secret, 12, fake={"first_delay": 0.6})
    refused = refusals(results)
    assert cluster.upstream.max_active <= 3
    assert len(results) - len(refused) >= 3
    assert {(e.status_code, e.code) for e in refused} == {(429, "parallel_limit_exceeded")}
    # The slots come back when calls end: three more fit at once again.
    cluster.upstream.max_active = 0
    again = spread(cluster, secret, 3, fake={"first_delay": 0.3})
    assert not refusals(again) and cluster.upstream.max_active == 3


def test_max_concurrent_holds_across_proxies(cluster: Cluster) -> None:
    """llm_max_concurrent=4 on each proxy means 4 in flight across all three; the rest wait their turn."""
    secret = cluster.key("conc")
    cluster.upstream.max_active = 0
    started = time.monotonic()
    results = spread(cluster, secret, 12, fake={"first_delay": 0.4})
    assert not refusals(results)  # they queued, none refused
    assert cluster.upstream.max_active <= 4
    assert time.monotonic() - started >= 3 * 0.4  # 12 calls, 4 at a time, 0.4 s each


def test_budget_probe_overshoots_by_at_most_one_call(cluster: Cluster) -> None:
    """The issue's probe: $0.001 budget, 20 concurrent calls of $0.00075 over three proxies."""
    name = f"budget-{secrets.token_hex(3)}"
    _, secret = admin.create_key(cluster.store, name, admin.parse_changes({"budget": "0.001"}))
    cluster.wait_live(secret)
    results = spread(cluster, secret, 20, max_tokens=5, fake={"input": 25, "output": 5, "first_delay": 0.3})
    refused = refusals(results)
    admitted = len(results) - len(refused)
    assert admitted >= 1
    assert {(e.status_code, e.code) for e in refused} == {(429, "insufficient_quota")}
    rows = cluster.rows.wait_for("key_id = %s AND status = 200", (name,), admitted)
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert all(r["cost_usd"] == PROBE_COST for r in rows)
    assert spent <= Decimal("0.001") + PROBE_COST  # the documented bound: less than one call's cost over


def test_budget_probe_on_one_proxy_without_redis(cluster: Cluster, tmp_path: Path) -> None:
    """Local mode (no llm_redis) reserves too: the same probe on a single proxy with a keys file."""
    keys_file = tmp_path / "keys.toml"
    name = "local-budget"
    _, secret = admin.create_key(keys_file, name, admin.parse_changes({"budget": "0.001"}))
    args = ["--mode", f"reverse:{cluster.upstream.url}@0", "--set", f"llm_providers={cluster.providers}",
            "--set", f"llm_pricing={cluster.pricing}", "--set", f"llm_db={cluster.db_url}",
            "--set", "llm_table=llm_requests_local", "--set", f"llm_keys={keys_file}"]
    local = Proxy(args, confdir=tmp_path / "conf", env={"OPENAI_API_KEY": "sk-real-cluster"}).start()
    try:
        single = Cluster([local], cluster.db_url, cluster.store, Rows(cluster.db_url, "llm_requests_local"),
                         cluster.relay, cluster.prefix, cluster.upstream, cluster.providers, cluster.pricing)
        results = spread(single, secret, 20, max_tokens=5, fake={"input": 25, "output": 5, "first_delay": 0.3})
        refused = refusals(results)
        admitted = len(results) - len(refused)
        assert admitted >= 1 and {(e.status_code, e.code) for e in refused} == {(429, "insufficient_quota")}
        rows = single.rows.wait_for("key_id = %s AND status = 200", (name,), admitted)
        assert sum((r["cost_usd"] for r in rows), Decimal(0)) <= Decimal("0.001") + PROBE_COST
    finally:
        local.stop()


def test_keys_api_on_one_proxy_is_live_on_the_others(cluster: Cluster) -> None:
    name = f"api-{secrets.token_hex(3)}"
    first, second = cluster.proxies[0], cluster.proxies[1]
    made = httpx.post(f"{first.url}/_llm/api/keys", json={"name": name, "rpm": 50}, timeout=10)
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert _status(first, secret, max_tokens=1) == 200  # in force at once where it was made
    created = time.monotonic()
    while _status(second, secret, max_tokens=1) != 200:
        assert time.monotonic() - created < 1.0
        time.sleep(0.02)
    listed = httpx.get(f"{second.url}/_llm/api/keys/{name}", timeout=10).json()
    assert listed["rpm"] == 50 and listed["state"] == "active" and "hash" not in listed
    bad = httpx.patch(f"{second.url}/_llm/api/keys/{name}", json={"rpm": -1}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("rpm:")
    assert httpx.patch(f"{second.url}/_llm/api/keys/{name}", json={"disabled": True}, timeout=10).status_code == 200
    disabled = time.monotonic()
    while _status(first, secret, max_tokens=1) != 403:
        assert time.monotonic() - disabled < 1.0
        time.sleep(0.02)


def test_tpm_refuses_before_the_fact_and_settles_with_real_usage(cluster: Cluster) -> None:
    secret = cluster.key("tpm", tpm=400)
    # A call whose own estimate (max output alone) is past the tpm can never pass: 413, not a 429.
    results = spread(cluster, secret, 1, max_tokens=1000)
    assert [(e.status_code, e.code) for e in refusals(results)] == [(413, "request_too_large")]
    # Each call reserves ~150 tokens (max_tokens + input estimate): only two fit in 400 at once,
    # though nothing has been used yet (real usage: 18 tokens a call).
    results = spread(cluster, secret, 6, max_tokens=150, fake={"first_delay": 0.5})
    refused = refusals(results)
    assert len(results) - len(refused) == 2
    assert {(e.status_code, e.code) for e in refused} == {(429, "rate_limit_exceeded")}
    assert all(e.response.headers["x-ratelimit-limit-tokens"] == "400" for e in refused)
    # Settled with real usage (2 x 18 tokens), the window has room for two more reservations again.
    assert not refusals(spread(cluster, secret, 2, max_tokens=150))


def test_cli_changes_are_live_on_every_proxy_within_a_second(cluster: Cluster) -> None:
    name = f"cli-{secrets.token_hex(3)}"
    env = {**os.environ, "LLM_PROXY_KEYS": "db", "DATABASE_URL": cluster.db_url}
    made = subprocess.run([str(BIN / "llm-proxy"), "keys", "create", name, "--rpm", "100"],
                          capture_output=True, text=True, env=env, timeout=30, check=True)
    secret = made.stdout.strip()
    created = time.monotonic()
    for proxy in cluster.proxies:
        while _status(proxy, secret, max_tokens=1) != 200:
            assert time.monotonic() - created < 1.0, "a new key was not live on every proxy within 1 s"
            time.sleep(0.02)
    subprocess.run([str(BIN / "llm-proxy"), "keys", "--db", cluster.db_url, "disable", name],
                   capture_output=True, text=True, timeout=30, check=True)
    disabled = time.monotonic()
    for proxy in cluster.proxies:
        while _status(proxy, secret, max_tokens=1) != 403:
            assert time.monotonic() - disabled < 1.0, "a disabled key still worked after 1 s"
            time.sleep(0.02)
    listed = subprocess.run([str(BIN / "llm-proxy"), "keys", "list", "--json", "--db", cluster.db_url],
                            capture_output=True, text=True, timeout=30, check=True)
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == name)
    assert entry["state"] == "disabled" and entry["rpm"] == 100
    assert secret not in listed.stdout and "sha256" not in listed.stdout


def test_keys_import_moves_a_keys_file_into_the_database(cluster: Cluster, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    name = f"imp-{secrets.token_hex(3)}"
    made = subprocess.run([str(BIN / "llm-proxy"), "keys", "--keys-file", str(keys_file), "create", name,
                           "--parallel", "2"], capture_output=True, text=True, timeout=30, check=True)
    secret = made.stdout.strip()
    imported = subprocess.run([str(BIN / "llm-proxy"), "keys", "import", str(keys_file), "--db", cluster.db_url],
                              capture_output=True, text=True, timeout=30)
    assert imported.returncode == 0, imported.stderr
    assert name in imported.stderr
    cluster.wait_live(secret)
    assert all(_status(p, secret, max_tokens=1) == 200 for p in cluster.proxies)
    with psycopg.connect(cluster.db_url) as conn:
        stored = conn.execute("SELECT * FROM llm_keys WHERE name = %s", (name,)).fetchone()
    assert stored is not None and secret not in json.dumps(stored, default=str)
    again = subprocess.run([str(BIN / "llm-proxy"), "keys", "import", str(keys_file), "--db", cluster.db_url],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already has key(s)" in again.stderr


def test_redis_cut_mid_run(cluster: Cluster) -> None:
    """Runs last: Redis goes away under load, then comes back (documented in cluster/shared.py)."""
    rated = cluster.key("cut-rpm", rpm=1000)
    budgeted = cluster.key("cut-budget", budget="10")
    proxy = cluster.proxies[0]
    assert httpx.get(f"{proxy.url}/_llm/health").json()["redis"]["state"] == "up"
    load = concurrent.futures.ThreadPoolExecutor(4)
    running = [load.submit(spread, cluster, rated, 6, fake={"first_delay": 0.3}) for _ in range(2)]
    time.sleep(0.15)
    cluster.relay.cut()
    try:
        for future in running:  # calls in flight when Redis went away still end, none hangs
            assert all(not isinstance(r, openai.APIStatusError) or r.status_code in (429, 503)
                       for r in future.result(timeout=15))
        started = time.monotonic()
        results = spread(cluster, rated, 6)  # rates: counted by each proxy alone
        assert not refusals(results)
        budget_results = spread(cluster, budgeted, 3)  # budgets: refused, not risked
        assert {(e.status_code, e.code) for e in refusals(budget_results)} == {(503, "budget_unavailable")}
        assert time.monotonic() - started < 5, "calls waited on an unreachable Redis"
        for p in cluster.proxies:
            state = httpx.get(f"{p.url}/_llm/health").json()
            assert state["status"] == "degraded" and state["redis"]["state"] == "down"
            assert "redis unreachable" in state["reason"]
    finally:
        cluster.relay.restore()
        load.shutdown(wait=True)
    deadline = time.monotonic() + 5
    while any(httpx.get(f"{p.url}/_llm/health").json()["redis"]["state"] != "up" for p in cluster.proxies):
        assert time.monotonic() < deadline, "the proxies did not find Redis again"
        time.sleep(0.1)
    assert not refusals(spread(cluster, budgeted, 3))


def test_bad_cluster_options_stop_start_up(tmp_path: Path) -> None:
    from tests.e2e.conftest import run_mitmdump_expecting_failure
    out = run_mitmdump_expecting_failure(["--set", "llm_keys=db", "--set", f"llm_db=sqlite:///{tmp_path}/x.db"],
                                         tmp_path / "a")
    assert "llm_keys=db keeps keys in PostgreSQL" in out
    out = run_mitmdump_expecting_failure(["--set", "llm_redis=http://127.0.0.1:6379"], tmp_path / "b")
    assert "is not a Redis URL" in out
