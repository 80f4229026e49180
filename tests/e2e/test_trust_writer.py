"""Trust the record, end to end: a call carrying characters PostgreSQL refuses is stored (with a
note) and the writer lives on; calls whose rows are dropped (database down, journal full) still
count towards their key's budget; a proxy whose journal another proxy holds keeps serving and
says so in health."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from llm_proxy.storage.rows import REPLACED_NOTE
from tests.fakes.tcprelay import TcpRelay
from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, drop_table, scenario, write_providers

CLI = Path(sys.executable).with_name("llm-proxy")


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    name = "llmp_test_trustw_" + os.urandom(4).hex()
    yield name
    drop_table(pg_url, name)


def start(start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path, pg_url: str, table: str,
          *extra: str, journal: Path | None = None) -> Proxy:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}",
                         "--set", f"llm_journal={journal or tmp_path / 'journal'}", *extra])
    proxy.wait_for_log("llm-proxy writing rows to")
    return proxy


def health(proxy: Proxy) -> dict:
    return httpx.get(f"{proxy.url}/_llm/health").json()


def rows(pg_url: str, table: str) -> dict[str, dict]:
    with psycopg.connect(pg_url) as conn:
        found = conn.execute(f"SELECT path, model, error, request_body FROM {table}").fetchall()
    return {path: {"model": model, "error": error, "request_body": body} for path, model, error, body in found}


def wait_rows(pg_url: str, table: str, count: int, timeout: float = 15) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows(pg_url, table)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, f"expected {count} rows, found {found}"
            return found
        time.sleep(0.1)


def raw_post(proxy: Proxy, target: bytes, body: bytes) -> bytes:
    """An HTTP request with bytes no client library would send (a non-UTF-8 request target)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer sk-hostile\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_call_with_characters_postgres_refuses_is_stored_with_a_note_and_the_writer_lives(
    table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path, pg_url: str
) -> None:
    proxy = start(start_proxy, upstream, tmp_path, pg_url, table)
    # The JSON escapes \ud800 and \udc80 are lone surrogates; the target's \xff byte is not UTF-8.
    # (A model name with one is covered by the unit tests: the fake upstream cannot echo it.)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\udc80 b\ud800"}]})
    answer = raw_post(proxy, b"/v1/chat/completions?tag=\xff", body.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-plain", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}])
    stored = wait_rows(pg_url, table, 2)
    hostile = stored["/v1/chat/completions?tag=\ufffd"]
    assert hostile["request_body"]["messages"][0]["content"] == "a\ufffd b\ufffd"
    assert hostile["error"] == REPLACED_NOTE + "path, upstream_url, request_body"
    assert stored["/v1/chat/completions"]["error"] is None
    state = health(proxy)
    assert state["status"] == "ok" and state["writer"]["dead_letters"] == 0
    assert state["writer"]["internal_errors"] == 0, proxy.log


def test_calls_whose_rows_are_dropped_still_count_towards_the_budget(
    table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.toml"
    made = subprocess.run([str(CLI), "keys", "--keys-file", str(keys_file), "create", "capped",
                           "--budget", "0.001", "--period", "1d"], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    with TcpRelay("127.0.0.1", 5432).start() as relay:
        proxy = start(start_proxy, upstream, tmp_path,
                      f"postgresql://postgres@127.0.0.1:{relay.port}/test?connect_timeout=2", table,
                      "--set", f"llm_keys={keys_file}", "--set", "llm_journal_max_mb=1")
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=secret, max_retries=0)
        # A first call while the database is up: the key's spend is loaded and its row written.
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers=scenario(input=10, output=0))
        deadline = time.monotonic() + 20
        while health(proxy)["writer"]["rows_written"] < 1:
            assert time.monotonic() < deadline, health(proxy)
            time.sleep(0.1)
        relay.cut()  # the database goes away; a 1 MB journal holds two of these calls' rows
        for _ in range(4):  # $0.0003 each, served: $0.0012 spent, past the $0.001 budget
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "x" * 400_000}],
                                           extra_headers=scenario(input=2000, output=0))
        deadline = time.monotonic() + 20
        while health(proxy)["writer"]["rows_dropped"] < 2:
            assert time.monotonic() < deadline, health(proxy)
            time.sleep(0.1)
        with pytest.raises(openai.RateLimitError, match="budget"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])


def test_a_proxy_whose_journal_is_held_by_another_serves_stores_and_says_degraded(
    table: str, upstream: FakeUpstream, start_proxy: ProxyFactory, tmp_path: Path, pg_url: str
) -> None:
    journal = tmp_path / "shared-journal"
    first = start(start_proxy, upstream, tmp_path, pg_url, table, journal=journal)
    second = start(start_proxy, upstream, tmp_path, pg_url, table, journal=journal)
    assert health(first)["status"] == "ok"
    state = health(second)
    assert state["status"] == "degraded" and state["reason"].startswith("no journal: ")
    assert "in use by another llm-proxy process" in state["reason"]
    client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="sk-second", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    wait_rows(pg_url, table, 1)
    assert "runs without a journal" in second.log
