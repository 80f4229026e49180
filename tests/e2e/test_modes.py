"""How the proxy is run: embedded default database, regular mode, mitmweb comments,
bad configuration, shutdown and an unreachable database."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import ssl
import subprocess
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from mitmproxy import io as mitmio

from llm_proxy.redact import fingerprint
from tests.fakes.upstream import FakeUpstream

from .conftest import (
    ProxyFactory,
    Rows,
    drop_table,
    new_key,
    run_mitmdump_expecting_failure,
    write_providers,
)


def chat(base_url: str, key: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, **kwargs)
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-scenario": json.dumps({"input": 1204, "output": 312})},
    )


def test_embedded_sqlite_default(tmp_path: Path, upstream: FakeUpstream, start_proxy: ProxyFactory) -> None:
    """No llm_db and no DATABASE_URL: rows land in $LLM_PROXY_HOME/llm-proxy.db, bodies off here."""
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    env = {"LLM_PROXY_HOME": str(tmp_path / "home"), "DATABASE_URL": ""}
    proxy = start_proxy(
        ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
         "--set", "llm_log_bodies=false"],
        env=env,
    )
    key = new_key()
    chat(f"{proxy.url}/v1", key)
    proxy.stop()  # done() flushes the writer
    with sqlite3.connect(tmp_path / "home" / "llm-proxy.db") as db:
        db.row_factory = sqlite3.Row
        [row] = db.execute("SELECT * FROM llm_requests WHERE key_id = ?", (fingerprint(key),)).fetchall()
    assert (row["provider"], row["input_tokens"], row["output_tokens"], row["streaming"]) == ("openai", 1204, 312, 0)
    assert row["cost_usd"] == "0.0003678"  # exact text, never a float: (1204 * 0.15 + 312 * 0.60) / 1e6
    assert Decimal(row["cost_usd"]) == Decimal("0.0003678")
    assert row["request_body"] is None and row["response_body"] is None


def test_regular_mode_meters_provider_hosts_only(
    tmp_path: Path, pg_url: str, start_proxy: ProxyFactory
) -> None:
    """HTTPS_PROXY clients trusting mitmproxy's CA: provider hosts metered, the rest untouched."""
    table = "llmp_test_regular_" + os.urandom(4).hex()
    with FakeUpstream(tls=True).start() as tls_upstream, FakeUpstream(tls=True).start() as not_a_provider:
        providers = tmp_path / "providers.toml"
        # The provider is "localhost:PORT"; another server of the machine (another port) is not one.
        providers.write_text(f'[providers.openai]\nbase_url = "{tls_upstream.url}"\nformat = "openai"\n')
        proxy = start_proxy([
            "--mode", "regular@0", "--set", f"llm_providers={providers}", "--set", f"llm_db={pg_url}",
            "--set", f"llm_table={table}", "--set", "ssl_insecure=true",  # the fake's self-signed cert
        ])
        ca = proxy.confdir / "mitmproxy-ca-cert.pem"
        trust_mitmproxy = ssl.create_default_context(cafile=ca)
        key, other_key = new_key(), new_key()
        try:
            http_client = openai.DefaultHttpxClient(proxy=proxy.url, verify=trust_mitmproxy)
            reply = chat(f"{tls_upstream.url}/v1", key, http_client=http_client)
            assert reply.usage is not None and reply.usage.prompt_tokens == 1204
            curl = subprocess.run(
                ["curl", "-sS", "--fail", "-x", proxy.url, "--cacert", str(ca),
                 "-H", f"authorization: Bearer {key}", "-H", "content-type: application/json",
                 "-d", '{"model": "gpt-4o-mini", "messages": []}', f"{tls_upstream.url}/v1/chat/completions"],
                capture_output=True, text=True, timeout=30,
            )
            assert curl.returncode == 0, curl.stderr
            assert json.loads(curl.stdout)["usage"]["prompt_tokens"] == 11
            other = httpx.post(
                f"https://127.0.0.1:{not_a_provider.port}/v1/chat/completions", proxy=proxy.url,
                verify=trust_mitmproxy, json={"model": "gpt-4o-mini", "messages": []},
                headers={"authorization": f"Bearer {other_key}"},
            )
            assert other.status_code == 200 and "identity" not in not_a_provider.requests[-1].headers.get(
                "accept-encoding", "")
            rows = Rows(pg_url, table)
            assert [r["input_tokens"] for r in rows.wait(key, 2)] == [1204, 11]
            assert rows.fetch("key_id = %s", (fingerprint(other_key),)) == []
        finally:
            proxy.stop()
            drop_table(pg_url, table)


def test_mitmweb_comment_on_each_flow(tmp_path: Path, upstream: FakeUpstream, start_proxy: ProxyFactory) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    flows_file = tmp_path / "flows.mitm"
    proxy = start_proxy([
        "--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
        "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}", "--set", f"save_stream_file={flows_file}",
    ])
    chat(f"{proxy.url}/v1", new_key())
    httpx.get(f"{proxy.url}/v1/models")
    proxy.stop()
    with open(flows_file, "rb") as f:
        flows = list(mitmio.FlowReader(f).stream())
    metered, unknown_path = (flow.comment for flow in flows)
    assert metered == "gpt-4o-mini · 1,204→312 tok · $0.0003678"
    assert unknown_path == ""  # not a model call (llm_record=models): no row, so no comment either


def test_same_script_in_mitmweb(tmp_path: Path, upstream: FakeUpstream, start_proxy: ProxyFactory) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(
        ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
         "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}", "--set", "web_open_browser=false",
         "--set", "web_port=0"],
        tool="mitmweb",
    )
    key = new_key()
    chat(f"{proxy.url}/v1", key)
    proxy.stop()
    with sqlite3.connect(tmp_path / "rows.db") as db:
        [(tokens, cost)] = db.execute(
            "SELECT input_tokens, cost_usd FROM llm_requests WHERE key_id = ?", (fingerprint(key),)
        ).fetchall()
    assert (tokens, cost) == (1204, "0.0003678")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("llm_db=mysql://localhost/x", "is not a database URL"),
        ("llm_table=bad-name;drop", "must be a plain SQL identifier"),
        ("llm_providers=/nonexistent/providers.toml", "cannot read providers file"),
        ("llm_pricing=/nonexistent/pricing.toml", "cannot read pricing file"),
    ],
)
def test_bad_configuration_stops_start_up_with_a_clear_message(tmp_path: Path, option: str, message: str) -> None:
    output = run_mitmdump_expecting_failure(["--set", option], tmp_path / "conf")
    assert message in output


def test_sigterm_flushes_every_row(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str, pg_table: str, start_proxy: ProxyFactory
) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy([
        "--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
        "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}",
    ])
    key = new_key()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: chat(f"{proxy.url}/v1", key), range(40)))
    assert proxy.stop() == 0
    assert len(Rows(pg_url, pg_table).fetch("key_id = %s", (fingerprint(key),))) == 40


def test_database_down_does_not_stop_the_proxy(
    tmp_path: Path, upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy([
        "--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
        "--set", "llm_db=postgresql://postgres@127.0.0.1:9/none?connect_timeout=1",
    ])
    for _ in range(3):
        assert chat(f"{proxy.url}/v1", new_key()).usage.prompt_tokens == 1204
    proxy.wait_for_log("cannot write to postgresql")
    assert "Traceback" not in proxy.log


def test_regular_mode_fallback_through_the_relay(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    """An HTTPS_PROXY client gets its fallback too: the relay takes over a TLS flow."""
    with FakeUpstream(tls=True).start() as tls_upstream:
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "{tls_upstream.url}"\nformat = "openai"\n\n'
                             '[models."gpt-4o-mini"]\nfallbacks = ["openai:gpt-4.1-mini"]\n')
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}", "--set", "ssl_insecure=true"])
        trust = ssl.create_default_context(cafile=proxy.confdir / "mitmproxy-ca-cert.pem")
        client = openai.OpenAI(base_url=f"{tls_upstream.url}/v1", api_key="sk-regular", max_retries=0,
                               http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=trust))
        failing = {"x-fake-scenario": json.dumps({"only_model": "gpt-4o-mini", "status": 503})}
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", stream=True, extra_headers=failing,
                                                     messages=[{"role": "user", "content": "hi"}]))
        assert chunks[0].model == "gpt-4.1-mini"
        assert [r.json["model"] for r in tls_upstream.requests] == ["gpt-4o-mini", "gpt-4.1-mini"]
        assert {r.headers["authorization"] for r in tls_upstream.requests} == {"Bearer sk-regular"}
        proxy.stop()
    with sqlite3.connect(tmp_path / "rows.db") as db:
        [(provider, fallback_from, attempts)] = db.execute(
            "SELECT provider, fallback_from, attempts FROM llm_requests").fetchall()
    assert (provider, fallback_from) == ("openai", "openai:gpt-4o-mini")
    assert [a["status"] for a in json.loads(attempts)] == [503, 200]
