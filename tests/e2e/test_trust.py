"""Issue 8's hooks-side promises, end to end against a real mitmdump: bad option values stop
start-up, calls in flight at SIGTERM keep their rows, a keys file that changes never turns
keys mode into passthrough, percent-encoded key parameters are masked, and regular mode
matches provider hosts however they are spelled."""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream

from .conftest import (
    ProxyFactory,
    Rows,
    drop_table,
    new_key,
    run_mitmdump_expecting_failure,
    scenario,
    write_providers,
)
from .test_keys import REAL_KEYS, chat, create


@pytest.mark.parametrize(("option", "shown"), [
    ("llm_body_max_bytes=abc", "llm_body_max_bytes=abc is not a valid whole number"),
    ("llm_log_bodies=maybe", "llm_log_bodies=maybe is not a valid true/false value"),
    ("llm_retries=x", "llm_retries=x is not a valid whole number"),
    ("llm_max_concurrent=1.5", "llm_max_concurrent=1.5 is not a valid whole number"),
    ("llm_bodies_max_bytes=5", "unknown option llm_bodies_max_bytes; did you mean llm_body_max_bytes?"),
])
def test_an_option_value_of_the_wrong_type_stops_start_up(tmp_path: Path, option: str, shown: str) -> None:
    """Before: mitmproxy dropped the whole script and the proxy ran unmetered."""
    output = run_mitmdump_expecting_failure(["--set", option], tmp_path / "conf")
    assert shown in output


def test_calls_in_flight_at_sigterm_keep_their_rows(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str, pg_table: str, start_proxy: ProxyFactory
) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"])
    proxy.wait_for_log("llm-proxy writing rows to")
    key = new_key()
    started = threading.Barrier(7)

    def slow_stream(n: int) -> None:
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
        try:
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                extra_headers=scenario(output=40, delay=0.25))
            started.wait(10)
            for _ in stream:
                pass
        except Exception:
            pass  # the proxy goes away mid-stream: the client's error is expected

    threads = [threading.Thread(target=slow_stream, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    started.wait(10)
    time.sleep(0.5)
    assert proxy.stop() == 0
    for t in threads:
        t.join(20)
    rows = Rows(pg_url, pg_table).fetch("key_id = %s", (fingerprint_of(key),))
    assert len(rows) == 6
    for row in rows:
        assert "llm-proxy stopped before the call ended" in row["error"]
        assert row["status"] == 200 and row["streaming"] is True


def fingerprint_of(key: str) -> str:
    from llm_proxy.redact import fingerprint
    return fingerprint(key)


@pytest.mark.parametrize("change", ["emptied", "only-table", "deleted", "garbage"])
def test_a_changed_keys_file_never_means_passthrough(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str, pg_table: str, start_proxy: ProxyFactory, change: str
) -> None:
    keys_file = tmp_path / "keys.toml"
    secret = create(keys_file, "alice")
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    providers.write_text(providers.read_text().replace(
        "[providers.openai]\n", '[providers.openai]\napi_key_env = "OPENAI_API_KEY"\n'))
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}",
                         "--set", f"llm_keys={keys_file}"], env=REAL_KEYS)
    assert chat(proxy, secret).usage.prompt_tokens == 11
    if change == "emptied":
        keys_file.write_text("")
    elif change == "only-table":
        keys_file.write_text("[keys]\n")
    elif change == "deleted":
        keys_file.unlink()
    else:
        keys_file.write_text("[keys.alice\nhash = ")  # truncated mid-write
    time.sleep(1.0)  # the watcher polls four times a second
    before = len(upstream.requests)
    for credential in ("", secret, "sk-whatever"):
        reply = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                           headers={"authorization": f"Bearer {credential}"} if credential else {})
        if change in ("deleted", "garbage") and credential == secret:
            assert reply.status_code == 200  # the keys in force are kept
        else:
            assert reply.status_code == 401, (credential, reply.text)
    forwarded = upstream.requests[before:]
    assert all(r.headers.get("authorization") == f"Bearer {REAL_KEYS['OPENAI_API_KEY']}" for r in forwarded)
    assert secret not in json.dumps([r.headers for r in upstream.requests])


def test_percent_encoded_key_parameter_is_masked(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str, pg_table: str, start_proxy: ProxyFactory
) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}",
                         "--set", "flow_detail=1"],  # mitmdump's default: its own log prints each URL
                        env={"PYTHONUNBUFFERED": "1"})
    secret = new_key("AIzaSECRET")
    reply = httpx.post(f"{proxy.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent?%6Bey={secret}",
                       json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=30)
    assert reply.status_code == 200
    [row] = Rows(pg_url, pg_table).wait(secret)  # the key authenticated: its fingerprint is the key_id
    assert row["path"].endswith("?%6Bey=***") and secret not in json.dumps(row, default=str)
    # The key went upstream in Gemini's header, not in the URL mitmproxy prints and shows.
    assert upstream.requests[-1].headers["x-goog-api-key"] == secret and "key" not in upstream.requests[-1].query
    proxy.stop()
    assert "POST http://" in proxy.log and secret not in proxy.log


@pytest.mark.parametrize("spelling", ["127.1", "2130706433", "localhost", "0x7f.0.0.1"])
def test_regular_mode_matches_a_provider_however_its_address_is_spelled(
    tmp_path: Path, pg_url: str, start_proxy: ProxyFactory, spelling: str
) -> None:
    table = "llmp_test_spelling_" + os.urandom(4).hex()
    with FakeUpstream().start() as plain:
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "http://127.0.0.1:{plain.port}"\nformat = "openai"\n')
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}"])
        key = new_key()
        try:
            reply = httpx.post(f"http://{spelling}:{plain.port}/v1/chat/completions", proxy=proxy.url,
                               json={"model": "gpt-4o-mini", "messages": []},
                               headers={"authorization": f"Bearer {key}"}, timeout=30)
            assert reply.status_code == 200
            [row] = Rows(pg_url, table).wait(key)
            assert (row["provider"], row["input_tokens"]) == ("openai", 11)
        finally:
            proxy.stop()
            drop_table(pg_url, table)


def test_only_providers_refuses_other_hosts_in_regular_mode(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    with FakeUpstream().start() as provider, FakeUpstream(tls=True).start() as other:
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "http://127.0.0.1:{provider.port}"\n'
                             'format = "openai"\n')
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}", "--set", "llm_only_providers=true",
                             "--set", "ssl_insecure=true"])
        ok = httpx.post(f"http://localhost:{provider.port}/v1/chat/completions", proxy=proxy.url,
                        json={"model": "gpt-4o-mini", "messages": []}, timeout=30)
        assert ok.status_code == 200
        # Another port of the same machine is another host: refused, plain HTTP and CONNECT alike.
        plain = httpx.get(f"http://127.0.0.1:{other.port + 0}/anything", proxy=proxy.url, timeout=30)
        assert plain.status_code == 403 and "llm_only_providers" in plain.json()["error"]["message"]
        with pytest.raises(httpx.ProxyError, match="403"):
            httpx.get(f"https://127.0.0.1:{other.port}/v1/models", proxy=proxy.url, timeout=30,
                      verify=ssl.create_default_context(cafile=proxy.confdir / "mitmproxy-ca-cert.pem"))
        assert not other.requests
