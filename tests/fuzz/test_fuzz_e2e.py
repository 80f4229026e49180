"""End to end, few and slow: random raw requests to a real `mitmdump -s addon/llm_proxy.py` on PostgreSQL.

Each example sends one hostile request over a plain socket (random path bytes, `key=` parameters,
random body, the client key in a header), then one normal call. After each: the normal call has
exactly one row and the hostile one at most one (exactly one unless mitmproxy itself refused it as
malformed HTTP); the writer is alive (`/_llm/health` rows_written grows, status ok or degraded);
no secret in any row or in the proxy's output; counts NULL or non-negative, cost NULL or >= 0.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import psycopg
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from llm_proxy import apis
from llm_proxy.control.reports import drop_calls_table
from llm_proxy.redact import fingerprint
from tests.e2e.conftest import PG_URL, Proxy, write_providers
from tests.fakes.upstream import FakeUpstream

from .harness import COUNT_COLUMNS
from .strategies import SECRET, json_value, dump, request_body, request_path

ROW_WAIT = 8.0


class Live:
    def __init__(self, proxy: Proxy, table: str) -> None:
        self.proxy = proxy
        self.table = table

    def rows(self, key: str) -> list[dict[str, Any]]:
        with psycopg.connect(PG_URL, row_factory=dict_row) as conn:
            return conn.execute(f"SELECT * FROM {self.table}_full WHERE key_id = %s", (fingerprint(key),)).fetchall()

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.proxy.url}/_llm/health", timeout=10).json()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    try:
        with psycopg.connect(PG_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is needed for the end-to-end fuzz test ({PG_URL}): {e}", pytrace=False)
    tmp = tmp_path_factory.mktemp("fuzz-e2e")
    table = f"fuzz_e2e_{secrets.token_hex(5)}"
    with FakeUpstream().start() as upstream:
        providers = write_providers(tmp / "providers.toml", upstream.url)
        proxy = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                       "--set", f"llm_db={PG_URL}", "--set", f"llm_table={table}",
                       "--set", f"llm_journal={tmp / 'journal'}"], confdir=tmp / "conf").start()
        try:
            proxy.wait_for_log("llm-proxy writing rows to")
            yield Live(proxy, table)
        finally:
            proxy.stop()
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                drop_calls_table(conn, table)
                conn.execute(f"DROP TABLE IF EXISTS {table}_stage")


def _raw_request(port: int, head: bytes, body: bytes) -> bytes:
    """Send bytes as they are (no client library would send these) and read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _leaks(text: str) -> bool:
    return any(SECRET.lower() in view.lower() for view in (text, unquote(text, errors="surrogateescape")))


def _check_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for column, value in row.items():
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
                assert not _leaks(text), f"secret in column {column}: {text[:300]!r}"
        for column in COUNT_COLUMNS:
            assert row[column] is None or row[column] >= 0, f"{column} = {row[column]}"
        assert row["cost_usd"] is None or Decimal(row["cost_usd"]) >= 0, f"cost_usd = {row['cost_usd']}"


def _wait_rows(live: Live, key: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + ROW_WAIT
    while True:
        rows = live.rows(key)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


_METHOD = st.sampled_from([b"POST", b"POST", b"GET", b"PUT"])
_EXTRA = st.lists(st.sampled_from([b"Transfer-Encoding: chunked", b"Content-Encoding: gzip",
                                   b"X-Fake-Scenario: {\"status\": 500}", b"Expect: 100-continue",
                                   b"Content-Type: text/plain"]), max_size=2, unique=True)
# No shrinking here: the proxy is shared by every example, so once one kills its writer every later
# example fails too, and shrinking would only walk to a meaningless "simplest" request. The first
# failure is reported as drawn; the in-process layer gives the minimal reproductions.
_FEW = settings(max_examples=max(4, settings.default.max_examples // 10),
                phases=[Phase.explicit, Phase.reuse, Phase.generate])


@_FEW
@given(path_and_shape=request_path(), method=_METHOD, extra=_EXTRA, data=st.data())
def test_hostile_raw_request_then_a_normal_call(live: Live, path_and_shape: tuple[bytes, str], method: bytes,
                                               extra: list[bytes], data: st.DataObject) -> None:
    path, shape = path_and_shape
    key = f"{SECRET}-{secrets.token_hex(4)}"
    body = data.draw(st.one_of(request_body(shape), json_value.map(lambda v: dump(v).encode())), label="body")
    if b"Transfer-Encoding: chunked" in extra:  # one chunk with the body, then the end
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        length = b""
    else:
        length = b"Content-Length: %d\r\n" % len(body)
    head = (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + b"Authorization: Bearer " + key.encode() + b"\r\n" + length
            + b"".join(h + b"\r\n" for h in extra) + b"\r\n")
    written_before = live.health()["writer"]["rows_written"]
    log_before = len(live.proxy.lines)

    answer = _raw_request(live.proxy.port, head, body)
    refused_as_http = not answer or b"protocol error" in answer.lower() or path.startswith(b"/_llm/")
    # Only model calls (a path of a known API shape) get rows (llm_record=models, the default).
    not_a_model_call = apis.api_for_path(path.decode("utf-8", "surrogateescape").partition("?")[0]) == apis.OTHER
    expected = 0 if refused_as_http or not_a_model_call else 1
    hostile_rows = _wait_rows(live, key, expected)
    assert len(hostile_rows) == expected or (refused_as_http and len(hostile_rows) <= 1), (
        f"hostile request: {len(hostile_rows)} rows; proxy answered {answer[:300]!r}; health {live.health()}")

    normal_key = f"{SECRET}-{secrets.token_hex(4)}"
    reply = httpx.post(f"{live.proxy.url}/v1/chat/completions", timeout=15,
                       headers={"authorization": f"Bearer {normal_key}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    normal_rows = _wait_rows(live, normal_key, 1)
    assert len(normal_rows) == 1, f"the normal call after the hostile one has no row; health {live.health()}"
    _check_rows(hostile_rows + normal_rows)
    if not_a_model_call and not refused_as_http:  # the writer keeps order: a late row would be in by now
        assert live.rows(key) == [], f"a non-model call got a row: {path[:80]!r}"

    health = live.health()
    assert health["status"] in ("ok", "degraded"), health
    assert health["writer"]["rows_written"] > written_before, f"writer wrote nothing: {health}"
    new_output = "".join(list(live.proxy.lines)[log_before:])
    assert not _leaks(new_output), f"secret in the proxy's output: {new_output[-2000:]}"
