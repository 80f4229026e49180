"""Coding agents as clients: a Claude Code session replayed, the README's recipes, unservable calls.

The Claude Code transcript (transcripts/claude_code_session.json) is sent as
the CLI sends it, headers and all, through a real mitmdump: in reverse mode
(ANTHROPIC_BASE_URL=http://PROXY/anthropic) and in regular mode (HTTPS_PROXY,
trusting mitmproxy's CA). Its model calls must give exact rows (tokens with
cache reads and writes, cost); its noise (HEAD of the base URL, telemetry,
settings, bootstrap, MCP registry) must reach the upstream byte for byte and
leave no row.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.process import LISTENING, Service
from tests.fakes.upstream import FakeUpstream

from llm_proxy.cli import main as cli

from .conftest import REPO, Proxy, ProxyFactory, Rows, drop_table, new_key, openai_client, write_providers

TRANSCRIPT = json.loads((Path(__file__).parent / "transcripts" / "claude_code_session.json").read_text())
MILLION = Decimal(1_000_000)
# USD per 1M tokens (genai-prices, as `llm-proxy prices show MODEL --provider anthropic` shows them).
RATES = {
    "claude-sonnet-4-5": {"input": 3, "cache_read": Decimal("0.3"), "cache_write": Decimal("3.75"), "output": 15},
    "claude-haiku-4-5": {"input": 1, "cache_read": Decimal("0.1"), "cache_write": Decimal("1.25"), "output": 5},
}


def _expected_row(step: dict[str, Any]) -> dict[str, Any]:
    s = step["scenario"]
    model, count_tokens = step["body"]["model"], "count_tokens" in step["path"]
    if count_tokens:
        # Counting tokens is free and bills nothing: the row has no usage, and costs 0.
        return {"api": "anthropic-count-tokens", "model": model, "status": 200, "streaming": False,
                "input_tokens": None, "output_tokens": None, "cost_usd": Decimal(0)}
    cached, written, total_in, out = s.get("cached", 0), s.get("cache_write", 0), s["input"], s["output"]
    r = RATES[model]
    cost = ((total_in - cached - written) * r["input"] + cached * r["cache_read"] + written * r["cache_write"]
            + out * r["output"]) / MILLION
    return {"api": "anthropic-messages", "model": model, "status": 200, "streaming": step["streaming"],
            "input_tokens": total_in, "output_tokens": out, "total_tokens": total_in + out,
            "cached_tokens": cached, "cache_write_tokens": written, "cost_usd": cost}


def replay_claude_code(base: str, key: str, client: httpx.Client) -> list[httpx.Response]:
    """Send the session to `base` (the CLI's ANTHROPIC_BASE_URL) in order, as Claude Code does."""
    replies = []
    for step in TRANSCRIPT["requests"]:
        headers = {**TRANSCRIPT["headers"], **step.get("headers", {}), "x-api-key": key}
        content = None
        if "body" in step:
            content = json.dumps(step["body"]).encode()
            headers["content-type"] = "application/json"
        if "scenario" in step:
            headers["x-fake-scenario"] = json.dumps(step["scenario"])
        reply = client.request(step["method"], base + step["path"], headers=headers, content=content)
        assert reply.status_code < 500, (step["note"], reply.status_code, reply.text[:300])
        replies.append(reply)
    return replies


def check_session(rows: Rows, key: str, upstream: FakeUpstream, replies: list[httpx.Response],
                  path_prefix: str) -> None:
    steps = TRANSCRIPT["requests"]
    model_steps = [s for s in steps if s["model_call"]]
    found = rows.wait(key, len(model_steps))
    for step, row in zip(model_steps, found):
        expected = _expected_row(step)
        assert {k: row[k] for k in expected} == expected, step["note"]
        assert row["provider"] == "anthropic" and row["error"] is None
        assert row["path"] == path_prefix + step["path"]
        assert row["request_body"]["model"] == step["body"]["model"]  # model calls keep their bodies
    for step, reply in zip(steps, replies):
        if step["model_call"]:
            assert reply.status_code == 200, step["note"]
    # The noise reached the provider exactly as sent, credential included (passthrough), and left no row.
    seen = [r for r in upstream.requests if r.headers.get("x-api-key") == key]
    assert len(seen) == len(steps)
    for step, got in zip(steps, seen):
        assert got.method == step["method"]
        if not step["model_call"]:
            assert got.body == (json.dumps(step["body"]).encode() if "body" in step else b""), step["note"]
            assert got.headers["user-agent"] == TRANSCRIPT["headers"]["user-agent"]
    assert len(rows.fetch("key_id = %s AND (path LIKE '%%/api/%%' OR path LIKE '%%mcp-registry%%' "
                          "OR method = 'HEAD')", (found[0]["key_id"],))) == 0


def test_claude_code_session_reverse_mode(proxy: Proxy, rows: Rows, upstream: FakeUpstream) -> None:
    """ANTHROPIC_BASE_URL=http://PROXY/anthropic: the session's model calls are rows, nothing else."""
    key = new_key("sk-ant-api03")
    with httpx.Client(timeout=30) as client:
        replies = replay_claude_code(f"{proxy.url}/anthropic", key, client)
    check_session(rows, key, upstream, replies, "/anthropic")


def test_claude_code_session_regular_mode(tmp_path: Path, pg_url: str, start_proxy: ProxyFactory) -> None:
    """HTTPS_PROXY=http://PROXY with mitmproxy's CA trusted: the same rows, the same silence."""
    table = "llmp_test_agents_" + os.urandom(4).hex()
    with FakeUpstream(tls=True).start() as api:  # stands in for https://api.anthropic.com
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.anthropic]\nbase_url = "{api.url}"\nformat = "anthropic"\n')
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}",
                             "--set", "ssl_insecure=true"])
        try:
            trust = ssl.create_default_context(cafile=proxy.confdir / "mitmproxy-ca-cert.pem")
            key = new_key("sk-ant-api03")
            with httpx.Client(proxy=proxy.url, verify=trust, timeout=30) as client:
                replies = replay_claude_code(api.url, key, client)
            check_session(Rows(pg_url, table), key, api, replies, "")
        finally:
            proxy.stop()
            drop_table(pg_url, table)


def test_claude_code_session_keys_mode(tmp_path: Path, upstream: FakeUpstream, pg_url: str,
                                       start_proxy: ProxyFactory) -> None:
    """Virtual keys: model calls get the real key; the noise needs the virtual key, goes on with no key at all."""
    keys_file, table = tmp_path / "keys.toml", "llmp_test_agents_" + os.urandom(4).hex()
    real = "sk-ant-real-" + os.urandom(6).hex()
    providers = write_providers(tmp_path / "p.toml", upstream.url)
    providers.write_text(providers.read_text().replace(
        'format = "anthropic"\n', 'format = "anthropic"\napi_key_env = "LLMP_AGENTS_ANTHROPIC"\n'))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["keys", "create", "claude-code", "--keys-file", str(keys_file)]) == 0
    secret = out.getvalue().strip()
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_keys={keys_file}", "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}"],
                        env={"LLMP_AGENTS_ANTHROPIC": real})
    try:
        with httpx.Client(timeout=30) as client:
            refused = client.get(f"{proxy.url}/anthropic/api/claude_code/settings", headers={"x-api-key": "llmp-x"})
            assert refused.status_code == 401 and refused.json()["type"] == "error"  # Anthropic's shape
            upstream.clear()
            replies = replay_claude_code(f"{proxy.url}/anthropic", secret, client)
        steps = TRANSCRIPT["requests"]
        assert all(r.status_code == 200 for s, r in zip(steps, replies) if s["model_call"])
        found = Rows(pg_url, table).wait_for("key_id = %s", ("claude-code",), sum(s["model_call"] for s in steps))
        assert [r["model"] for r in found] == [s["body"]["model"] for s in steps if s["model_call"]]
        assert len(upstream.requests) == len(steps)
        for step, got in zip(steps, upstream.requests):
            assert secret not in json.dumps(got.headers)  # the virtual key never reaches the provider
            assert got.headers.get("x-api-key") == (real if step["model_call"] else None), step["note"]
    finally:
        proxy.stop()
        drop_table(pg_url, table)


# --- the README's recipes, with the clients' own environment variables -------------------------------------


def _run_client(code: str, env: dict[str, str]) -> str:
    """A fresh Python process configured only by the environment, as an agent is."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_env_recipes_reverse_mode(proxy: Proxy, rows: Rows) -> None:
    """Codex / Cursor-style / aider (OPENAI_BASE_URL or OPENAI_API_BASE) and Claude Code (ANTHROPIC_BASE_URL)."""
    openai_key, anthropic_key = new_key(), new_key("sk-ant-api03")
    _run_client(
        "import anthropic, openai\n"
        "c = openai.OpenAI(max_retries=0)\n"  # Codex's HTTP provider: the Responses API
        "print(c.responses.create(model='gpt-4o-mini', input='hi').usage.total_tokens)\n"
        "print([m for m in c.chat.completions.create(model='gpt-4o-mini', stream=True,\n"  # Cursor-style
        "      messages=[{'role': 'user', 'content': 'hi'}])][-1].usage)\n"
        "a = anthropic.Anthropic(max_retries=0)\n"  # Claude Code reads the same two variables
        "print(a.messages.create(model='claude-haiku-4-5', max_tokens=8,\n"
        "      messages=[{'role': 'user', 'content': 'hi'}]).usage)\n",
        {"OPENAI_BASE_URL": f"{proxy.url}/v1", "OPENAI_API_KEY": openai_key,
         "ANTHROPIC_BASE_URL": f"{proxy.url}/anthropic", "ANTHROPIC_API_KEY": anthropic_key})
    responses, chat = rows.wait(openai_key, 2)
    assert (responses["api"], responses["input_tokens"], responses["output_tokens"]) == ("openai-responses", 11, 7)
    assert (chat["api"], chat["streaming"], chat["input_tokens"]) == ("openai-chat", True, 11)
    messages, = rows.wait(anthropic_key, 1)
    assert (messages["provider"], messages["api"], messages["model"]) == ("anthropic", "anthropic-messages",
                                                                          "claude-haiku-4-5")


def test_model_listing_passes_without_a_row(proxy: Proxy, rows: Rows, upstream: FakeUpstream) -> None:
    """Editors call GET /v1/models to check a key: it passes through, and is no model call."""
    key = new_key()
    httpx.get(f"{proxy.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30)
    openai_client(proxy, key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert [r["api"] for r in rows.wait(key, 1)] == ["openai-chat"]
    assert any(r.path == "/v1/models" and r.headers.get("authorization") == f"Bearer {key}"
               for r in upstream.requests)


# --- calls the configuration can never serve ---------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str,
           pg_table: str) -> Any:
    """Passthrough, one OpenAI base URL for every provider: claude-* routes to anthropic by model,
    but the proxy holds no anthropic key (its variable is unset)."""
    tmp = tmp_path_factory.mktemp("routed")
    providers = tmp / "providers.toml"
    providers.write_text(
        f'[providers.openai]\nbase_url = "{upstream.url}"\nformat = "openai"\n'
        f'[providers.anthropic]\nbase_url = "{upstream.url}"\nformat = "anthropic"\nhosts = ["anthropic.invalid"]\n'
        f'api_key_env = "LLMP_AGENTS_UNSET_KEY"\nmodels = ["claude-*"]\n'
        f'[providers.mistral]\nbase_url = "{upstream.url}"\nformat = "openai"\nhosts = ["mistral.invalid"]\n'
        f'models = ["mistral-*"]\n')
    p = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
               "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"], confdir=tmp / "conf")
    p.env.pop("LLMP_AGENTS_UNSET_KEY", None)
    p.start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p
    p.stop()


def test_responses_call_for_a_provider_without_that_api_is_a_400(routed: Proxy, rows: Rows,
                                                                  upstream: FakeUpstream) -> None:
    key = new_key()
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(routed, key).responses.create(model="claude-haiku-4-5", input="hi")
    assert caught.value.status_code == 400
    assert "provider 'anthropic' (anthropic) cannot serve a openai-responses call" in caught.value.message
    row, = rows.wait(key, 1)
    assert (row["status"], row["cost_usd"]) == (400, Decimal(0))
    assert len(upstream.requests) == before  # nothing went upstream


def test_routed_call_with_no_key_for_its_provider_is_a_401(routed: Proxy, rows: Rows, upstream: FakeUpstream) -> None:
    key = new_key()
    before = len(upstream.requests)
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(routed, key).chat.completions.create(model="claude-haiku-4-5",
                                                           messages=[{"role": "user", "content": "hi"}])
    assert "set LLMP_AGENTS_UNSET_KEY where the proxy runs" in caught.value.message
    assert "/anthropic/" in caught.value.message  # the other way: its own path with the client's own key
    assert len(upstream.requests) == before
    # The same model by its provider's own path, with the client's own key, is served.
    reply = anthropic.Anthropic(base_url=f"{routed.url}/anthropic", api_key=key, max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.output_tokens == 7
    refused, served = rows.wait(key, 2)
    assert (refused["status"], served["status"]) == (401, 200)


def test_routed_call_a_provider_can_serve_still_works(routed: Proxy, rows: Rows) -> None:
    """mistral needs no key here and speaks OpenAI: routing by model is not refused."""
    key = new_key()
    reply = openai_client(routed, key).chat.completions.create(model="mistral-small",
                                                               messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None and reply.usage.prompt_tokens == 11
    row, = rows.wait(key, 1)
    assert (row["provider"], row["status"]) == ("mistral", 200)


# --- the offline demo ----------------------------------------------------------------------------------------


def _count(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
            return conn.execute("SELECT count(*) FROM llm_requests").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_demo_gives_priced_rows_with_no_key(tmp_path: Path) -> None:
    """scripts/proxy --demo: the README's client lines, priced rows, /anthropic to the fake."""
    demo = Service("demo", [str(REPO / "scripts" / "proxy"), "--demo", "--port", "0", "--set",
                            f"confdir={tmp_path / 'conf'}", "--listen-host", "127.0.0.1"],
                   LISTENING, {"LLM_PROXY_HOME": str(tmp_path / "home"), "LLM_PROXY_VENV": sys.prefix})
    demo.start(timeout=60)
    try:
        url = f"http://127.0.0.1:{demo.group}"
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        messages = httpx.post(f"{url}/anthropic/v1/messages", timeout=30,
                              headers={"anthropic-version": "2023-06-01"},
                              json={"model": "claude-haiku-4-5", "max_tokens": 64,
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert messages.status_code == 200 and messages.headers["server"] == "fake-upstream"
        routed = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0).chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
        assert routed.usage is not None and routed.usage.completion_tokens == 7
        demo.wait_for_log("fake upstream for every provider at")
        demo_db = tmp_path / "home" / "demo.db"
        deadline = time.monotonic() + 15
        while _count(demo_db) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        report = subprocess.run(  # the README's line, through the scripts/llm-proxy wrapper
            [str(REPO / "scripts" / "llm-proxy"), "report", "--db", f"sqlite:///{demo_db}",
             "--by", "model,provider", "--format", "json"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "LLM_PROXY_VENV": sys.prefix}).stdout
        groups = {(g["model"], g["provider"]): g for g in json.loads(report)["groups"]}
        assert set(groups) == {("gpt-4o-mini", "openai"), ("claude-haiku-4-5", "anthropic")}
        assert groups[("gpt-4o-mini", "openai")]["cost_usd"] == "0.00000585"  # 11 in, 7 out at 0.15/0.60
        assert groups[("claude-haiku-4-5", "anthropic")]["cost_usd"] == "0.000092"  # 2 x (11 x $1 + 7 x $5)/1M
    finally:
        demo.stop()
