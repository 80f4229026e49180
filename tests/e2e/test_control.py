"""The control plane from outside: a real mitmdump, real HTTP clients, a real PostgreSQL.

Auth (admin key, wrong key, virtual key, loopback vs. another address), the usage,
requests, keys and me APIs against SQL sums of the rows, keys changed over HTTP in
force at once, the CLI and the API refusing bad input with the same words, metrics
and CORS.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from llm_proxy.keys import admin
from llm_proxy.keys.store import read_keyring
from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, Rows, scenario, write_providers

ADMIN_KEY = "adm-" + secrets.token_urlsafe(24)
ORIGIN = "http://app.example.test"
CLI = Path(sys.executable).with_name("llm-proxy")


def chat(proxy: Proxy, key: str, model: str = "gpt-4o-mini", **headers: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={**scenario(), **headers})


def api(proxy: Proxy, method: str, path: str, token: str | None = ADMIN_KEY, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{proxy.url}{path}", headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str
            ) -> Iterator[tuple[Proxy, Path, dict[str, str]]]:
    """A proxy with an admin key, keys mode, CORS for ORIGIN; the secrets of two keys."""
    tmp = tmp_path_factory.mktemp("control")
    keys_file = tmp / "keys.toml"
    keys = {name: admin.create_key(keys_file, name, {})[1] for name in ("alice", "bob")}
    providers = write_providers(tmp / "providers.toml", upstream.url)
    proxy = Proxy(
        ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}", "--set", f"llm_keys={keys_file}",
         "--set", f"llm_admin_key={ADMIN_KEY}", "--set", f"llm_cors_origins={ORIGIN}"],
        confdir=tmp / "conf",
    ).start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy, keys_file, keys
    proxy.stop()


def sql_totals(pg_url: str, table: str, key: str) -> tuple[int, Decimal, int]:
    with psycopg.connect(pg_url) as conn:
        count, cost, tokens = conn.execute(
            f"SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(input_tokens), 0) FROM {table} "
            "WHERE key_id = %s", (key,)).fetchone()
    return count, cost, tokens


# --- auth --------------------------------------------------------------------------------

def test_admin_key_wrong_key_and_no_key(control) -> None:
    proxy, _, _ = control
    assert api(proxy, "GET", "/_llm/api/usage").status_code == 200
    wrong = api(proxy, "GET", "/_llm/api/usage", token="adm-not-the-key-at-all")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "wrong admin key"
    assert wrong.headers["content-type"] == "application/json" and wrong.headers["cache-control"] == "no-store"
    missing = api(proxy, "GET", "/_llm/api/usage", token=None)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    assert api(proxy, "GET", "/_llm/health", token=None).status_code == 200  # health stays open


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/_llm/api/usage"), ("GET", "/_llm/api/requests"), ("GET", "/_llm/api/keys"),
    ("POST", "/_llm/api/keys"), ("GET", "/_llm/metrics"), ("DELETE", "/_llm/api/keys/bob"),
])
def test_a_virtual_key_on_an_admin_path_is_403(control, method, path) -> None:
    proxy, keys_file, keys = control
    answer = api(proxy, method, path, token=keys["alice"], json={"name": "x"} if method == "POST" else None)
    assert answer.status_code == 403
    assert "virtual key" in answer.json()["error"]["message"]
    assert "bob" in read_keyring(keys_file).by_name  # nothing was deleted


def test_me_shows_only_the_callers_key(control, pg_url: str, pg_table: str, rows: Rows) -> None:
    proxy, _, keys = control
    for _ in range(3):
        chat(proxy, keys["alice"])
    chat(proxy, keys["bob"])
    rows.wait_for("key_id = %s", ("alice",), 3)
    rows.wait_for("key_id = %s", ("bob",), 1)
    me = api(proxy, "GET", "/_llm/api/me?group_by=key,model", token=keys["alice"])
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["key"]["name"] == "alice" and "secret" not in body["key"] and "hash" not in body["key"]
    assert {g["key"] for g in body["usage"]["groups"]} == {"alice"}
    count, cost, tokens = sql_totals(pg_url, pg_table, "alice")
    assert body["usage"]["totals"]["requests"] == count == 3
    assert Decimal(body["usage"]["totals"]["cost_usd"]) == cost
    assert body["usage"]["totals"]["input_tokens"] == tokens
    assert body["key"]["spend_usd"] == body["usage"]["totals"]["cost_usd"]
    sneaky = api(proxy, "GET", "/_llm/api/me?key=bob", token=keys["alice"])
    assert sneaky.status_code == 400 and sneaky.json()["error"]["message"].startswith("key:")
    assert api(proxy, "GET", "/_llm/api/me").json() == {"admin": True}


def non_loopback_address() -> str:
    """This machine's own address on a network interface (the client then is not loopback)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for text in out:
        ip = ipaddress.ip_address(text)
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return text
    pytest.fail("this test needs a non-loopback IPv4 address on the machine (hostname -I shows none)")


def test_without_admin_key_only_loopback_is_admin(start_proxy: ProxyFactory, upstream: FakeUpstream,
                                                  pg_url: str, pg_table: str, tmp_path: Path) -> None:
    address = non_loopback_address()
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--listen-host", "0.0.0.0", "--mode", f"reverse:{upstream.url}@0",
                         "--set", f"llm_providers={providers}", "--set", f"llm_db={pg_url}",
                         "--set", f"llm_table={pg_table}", "--set", "llm_admin_key="],
                        env={"LLM_PROXY_ADMIN_KEY": ""})
    proxy.wait_for_log("llm-proxy writing rows to")
    assert api(proxy, "GET", "/_llm/api/usage", token=None).status_code == 200  # from 127.0.0.1
    # The same request from this machine's network address: the proxy sees a non-loopback peer.
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=30) as client:
        far = client.get(f"http://{address}:{proxy.port}/_llm/api/usage")
        assert far.status_code == 403
        assert "llm_admin_key" in far.json()["error"]["message"]
        assert client.get(f"http://{address}:{proxy.port}/_llm/health").status_code == 200
    # And keys over HTTP need a keys file: this proxy runs in passthrough mode.
    passthrough = api(proxy, "POST", "/_llm/api/keys", token=None, json={"name": "newbie"})
    assert passthrough.status_code == 409 and "llm_keys" in passthrough.json()["error"]["message"]
    assert api(proxy, "GET", "/_llm/api/keys", token=None).json() == {"keys": []}


# --- usage and requests ------------------------------------------------------------------------

def test_usage_equals_sql_and_bad_parameters_are_named(control, pg_url: str, pg_table: str, rows: Rows) -> None:
    proxy, _, keys = control
    chat(proxy, keys["bob"], model="gpt-4o")
    rows.wait_for("key_id = %s AND model = %s", ("bob", "gpt-4o"), 1)
    answer = api(proxy, "GET", "/_llm/api/usage?since=1h&group_by=key,model,day&key=bob").json()
    count, cost, tokens = sql_totals(pg_url, pg_table, "bob")
    assert answer["totals"]["requests"] == count
    assert Decimal(answer["totals"]["cost_usd"]) == cost and answer["totals"]["input_tokens"] == tokens
    assert answer["group_by"] == ["key", "model", "day"]
    assert {(g["key"], g["model"]) for g in answer["groups"]} == {("bob", "gpt-4o"), ("bob", "gpt-4o-mini")}
    for query, name in (("since=yesterday", "since"), ("until=2026-13-01", "until"), ("group_by=week", "group_by"),
                        ("colour=red", "colour"), ("since=1h&until=2h", "since")):
        bad = api(proxy, "GET", f"/_llm/api/usage?{query}")
        assert bad.status_code == 400, query
        assert bad.json()["error"]["message"].startswith(f"{name}:"), bad.text


def test_requests_page_and_one_request(control, rows: Rows) -> None:
    proxy, _, keys = control
    for _ in range(3):
        chat(proxy, keys["alice"], model="gpt-4o-nano")
    stored = rows.wait_for("model = %s", ("gpt-4o-nano",), 3)
    page = api(proxy, "GET", "/_llm/api/requests?model=gpt-4o-nano&limit=2").json()
    assert [r["request_id"] for r in page["requests"]] == [r["request_id"] for r in reversed(stored)][:2]
    assert "request_body" not in page["requests"][0]
    rest = api(proxy, "GET", f"/_llm/api/requests?model=gpt-4o-nano&limit=2&before={page['next_before']}").json()
    assert [r["request_id"] for r in rest["requests"]] == [stored[0]["request_id"]]
    assert rest["next_before"] is None
    one = api(proxy, "GET", f"/_llm/api/requests/{stored[0]['request_id']}").json()
    assert one["request_body"]["model"] == "gpt-4o-nano" and one["response_body"] is not None
    assert api(proxy, "GET", "/_llm/api/requests/nope").status_code == 404
    assert api(proxy, "GET", "/_llm/api/requests?limit=501").status_code == 400


# --- keys ------------------------------------------------------------------------------------------

def test_keys_over_http_are_in_force_at_once(control) -> None:
    proxy, keys_file, _ = control
    created = api(proxy, "POST", "/_llm/api/keys", json={"name": "carol", "rpm": 100, "budget": "5.50"})
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body.pop("secret")
    assert body["name"] == "carol" and body["rpm"] == 100 and body["budget"] == "5.50"
    assert body["state"] == "active" and body["spend_usd"] == "0" and body["prefix"] == secret[:9]
    assert chat(proxy, secret).usage.prompt_tokens > 0  # at once: no reload wait
    assert api(proxy, "POST", "/_llm/api/keys", json={"name": "carol"}).status_code == 409
    listed = api(proxy, "GET", "/_llm/api/keys").json()["keys"]
    assert "carol" in [k["name"] for k in listed] and all("hash" not in k for k in listed)
    assert secret not in keys_file.read_text()

    disabled = api(proxy, "PATCH", "/_llm/api/keys/carol", json={"disabled": True, "rpm": None})
    assert disabled.status_code == 200 and disabled.json()["state"] == "disabled" and disabled.json()["rpm"] is None
    with pytest.raises(openai.PermissionDeniedError, match="disabled"):
        chat(proxy, secret)
    api(proxy, "PATCH", "/_llm/api/keys/carol", json={"disabled": False})
    rotated = api(proxy, "POST", "/_llm/api/keys/carol/rotate").json()["secret"]
    with pytest.raises(openai.AuthenticationError):
        chat(proxy, secret)
    assert chat(proxy, rotated).id
    assert api(proxy, "DELETE", "/_llm/api/keys/carol").status_code == 204
    with pytest.raises(openai.AuthenticationError):
        chat(proxy, rotated)
    assert api(proxy, "GET", "/_llm/api/keys/carol").status_code == 404
    assert api(proxy, "DELETE", "/_llm/api/keys/carol").status_code == 404


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("rpm", 0, "0"), ("tpm", "x", "x"), ("budget", "abc", "abc"), ("budget", -1, "-1"),
    ("period", "2d", "2d"), ("expires", "notadate", "notadate"),
])
def test_cli_and_api_refuse_bad_input_with_the_same_words(control, tmp_path: Path, field, value, flag) -> None:
    proxy, _, _ = control
    answer = api(proxy, "POST", "/_llm/api/keys", json={"name": "dave", field: value})
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert message.startswith(f"{field}: ")
    done = subprocess.run([str(CLI), "keys", "--keys-file", str(tmp_path / "k.toml"), "create", "dave",
                           f"--{field}", flag], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"argument --{field}: {message.removeprefix(f'{field}: ')}" in done.stderr


# --- metrics and CORS ------------------------------------------------------------------------------

def test_metrics_count_calls(control, rows: Rows) -> None:
    proxy, _, keys = control
    chat(proxy, keys["alice"], model="gpt-metrics")
    rows.wait_for("model = %s", ("gpt-metrics",), 1)
    text = api(proxy, "GET", "/_llm/metrics").text
    assert 'llm_proxy_requests_total{key="alice",model="gpt-metrics",provider="openai",status="200"} 1.0' in text
    assert 'llm_proxy_tokens_total{key="alice",model="gpt-metrics",provider="openai",type="input"}' in text
    for name in ("llm_proxy_request_duration_seconds_bucket", "llm_proxy_overhead_seconds_count",
                 "llm_proxy_writer_queue_rows", "llm_proxy_journal_bytes", "llm_proxy_rows_dropped_total"):
        assert name in text


def test_cors_preflight_and_headers(control) -> None:
    proxy, _, keys = control
    preflight = httpx.options(f"{proxy.url}/v1/chat/completions", headers={
        "origin": ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    other = httpx.options(f"{proxy.url}/v1/chat/completions", headers={
        "origin": "http://evil.example.test", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    call = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                      headers={"origin": ORIGIN, "authorization": f"Bearer {keys['alice']}", **scenario()})
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == ORIGIN and "Origin" in call.headers["vary"]
    refused = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                         headers={"origin": ORIGIN, "authorization": "Bearer llmp-nope"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    usage = api(proxy, "GET", "/_llm/api/usage", headers={"origin": ORIGIN})
    assert usage.headers["access-control-allow-origin"] == ORIGIN
    plain = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                       headers={"authorization": f"Bearer {keys['alice']}", **scenario()})
    assert "access-control-allow-origin" not in plain.headers


def test_dashboard_files_are_served_to_anyone_and_nothing_else(control) -> None:
    proxy, _, _ = control
    page = api(proxy, "GET", "/_llm/", token=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = api(proxy, "GET", "/_llm/static/app.js", token=None)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for path in ("/_llm/static/..%2F..%2Faddon.py", "/_llm/static/../reports.py", "/_llm/static/VENDORED.md",
                 "/_llm/static/nope.js"):
        assert api(proxy, "GET", path, token=None).status_code == 404, path
