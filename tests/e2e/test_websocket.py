"""The Responses API over WebSocket, end to end: openai-python's `client.responses.connect()`
through a real mitmdump to a fake WebSocket-mode upstream, rows read from PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from secrets import token_hex

import openai
import pytest

from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.keys.store import write_keyring
from llm_proxy.redact import fingerprint

from tests.fakes.ws_upstream import FakeWsUpstream

from .conftest import Proxy, ProxyFactory, Rows, new_key, write_providers
from .test_keys import REAL_KEYS

TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}
FIXTURES = Path(__file__).parent / "fixtures"
GPT5 = {"input": Decimal("1.25"), "cached": Decimal("0.125"), "output": Decimal("10")}  # USD per 1M (genai-prices)


def gpt5_cost(input_tokens: int, cached: int, output: int) -> Decimal:
    return ((input_tokens - cached) * GPT5["input"] + cached * GPT5["cached"] + output * GPT5["output"]) / 1_000_000


def fake(**scenario: object) -> dict[str, str]:
    """The fake upstream's instructions for one response.create, in its metadata."""
    return {"fake": json.dumps(scenario)}


def turn(conn: Any, **create: Any) -> list[Any]:
    """Send one response.create; the events up to its terminal one."""
    conn.response.create(**create)
    return read_turn(conn)


def read_turn(conn: Any) -> list[Any]:
    events = []
    for event in conn:
        events.append(event)
        if event.type in TERMINAL:
            return events
    raise AssertionError(f"the socket closed after {[e.type for e in events]}")


def client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[FakeWsUpstream]:
    with FakeWsUpstream().start() as up:
        yield up


@pytest.fixture(scope="module")
def ws_proxy(tmp_path_factory: pytest.TempPathFactory, ws_upstream: FakeWsUpstream, pg_url: str,
             pg_table: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("ws")
    providers = write_providers(tmp / "providers.toml", ws_upstream.url)
    p = Proxy(["--mode", f"reverse:{ws_upstream.url}@0", "--set", f"llm_providers={providers}",
               "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"], confdir=tmp / "conf").start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p
    p.stop()


def test_two_creates_on_one_socket_are_two_exact_rows(ws_proxy: Proxy, ws_upstream: FakeWsUpstream,
                                                       rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        first = turn(conn, model="gpt-5", input="hi", metadata=fake(input=2000, cached=1000, output=500,
                                                                     reasoning=200, pieces=6, delay=0.05))
        second = turn(conn, model="gpt-5-mini", input="again", previous_response_id=first[-1].response.id,
                      metadata=fake(input=300, output=20, pieces=2))
    assert [e.type for e in first][-1] == "response.completed" and second[-1].type == "response.completed"
    one, two = rows.wait(key, 2)
    sent = [json.loads(m) for m in ws_upstream.received]
    flow_id = one["request_id"].rpartition(".")[0]
    assert (one["request_id"], two["request_id"]) == (f"{flow_id}.1", f"{flow_id}.2")
    for row in (one, two):
        assert (row["provider"], row["api"], row["method"], row["path"], row["streaming"], row["status"],
                row["error"]) == ("openai", "openai-responses", "WS", "/v1/responses", True, 200, None)
        assert row["upstream_url"] == f"ws://127.0.0.1:{ws_upstream.port}/v1/responses"
        assert row["client_addr"] == "127.0.0.1"
        assert 0 <= row["ttft_ms"] <= row["duration_ms"]
    assert (one["model"], one["response_model"]) == ("gpt-5", "gpt-5")
    assert (one["input_tokens"], one["cached_tokens"], one["output_tokens"], one["reasoning_tokens"],
            one["total_tokens"]) == (2000, 1000, 500, 200, 2500)
    assert one["cost_usd"] == gpt5_cost(2000, 1000, 500) == Decimal("0.006375")
    assert one["duration_ms"] >= 6 * 50  # six deltas 50 ms apart: the whole response, not the first event
    assert (two["model"], two["input_tokens"], two["output_tokens"], two["cached_tokens"]) == ("gpt-5-mini", 300, 20, 0)
    # The bodies: what the client sent, and the final response object.
    assert one["request_body"] in sent and two["request_body"] in sent
    assert (one["request_body"]["input"], two["request_body"]["input"]) == ("hi", "again")
    assert one["request_body"]["type"] == "response.create"
    assert one["response_body"]["status"] == "completed"
    assert one["response_body"]["output"][0]["content"][0]["text"] == "".join(f"piece {i} " for i in range(6))
    assert two["response_body"]["id"] == second[-1].response.id


def test_a_provider_path_prefix_routes_the_socket(ws_proxy: Proxy, ws_upstream: FakeWsUpstream, rows: Rows) -> None:
    key = new_key()
    named = openai.OpenAI(base_url=f"{ws_proxy.url}/openai/v1", api_key=key, max_retries=0)
    with named.responses.connect() as conn:
        assert turn(conn, model="gpt-5", input="hi", metadata=fake(output=3))[-1].type == "response.completed"
    (row,) = rows.wait(key)
    assert (row["path"], row["provider"], row["output_tokens"]) == ("/openai/v1/responses", "openai", 3)
    assert row["upstream_url"] == f"ws://127.0.0.1:{ws_upstream.port}/v1/responses"
    assert ws_upstream.handshakes[-1].path == "/v1/responses"


def test_a_successor_the_server_starts_by_itself_is_a_row(ws_proxy: Proxy, rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        first = turn(conn, model="gpt-5", input="hi", metadata=fake(output=5, successor=True, successor_output=11))
        successor = read_turn(conn)  # no response.create of its own
    assert first[-1].type == successor[-1].type == "response.completed"
    asked, started = rows.wait(key, 2)
    assert (asked["output_tokens"], asked["request_body"]["input"]) == (5, "hi")
    assert (started["output_tokens"], started["request_body"], started["model"], started["status"]) == (
        11, None, "gpt-5", 200)
    assert started["request_id"] == asked["request_id"][:-1] + "2"
    assert started["cost_usd"] == gpt5_cost(120, 0, 11)


def test_upstream_cut_mid_response_is_an_interrupted_row(ws_proxy: Proxy, rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        conn.response.create(model="gpt-5", input="hi", metadata=fake(cut_after=6, cut="abort"))
        with pytest.raises(Exception):
            read_turn(conn)
    (row,) = rows.wait(key)
    assert row["status"] is None and row["input_tokens"] is None and row["output_tokens"] is None
    assert row["error"] == "interrupted: the WebSocket was closed by the server (code 1006) before the response ended"
    assert row["ttft_ms"] is not None and row["duration_ms"] >= row["ttft_ms"]
    assert [e["type"] for e in row["response_body"]["stream_events"]][:2] == ["response.created",
                                                                             "response.in_progress"]


def test_client_hanging_up_mid_response_is_an_interrupted_row(ws_proxy: Proxy, rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        conn.response.create(model="gpt-5", input="hi", metadata=fake(pieces=40, delay=0.05))
        assert next(iter(conn)).type == "response.created"
    (row,) = rows.wait(key)
    assert row["status"] is None and row["output_tokens"] is None
    assert row["error"].startswith("interrupted: the WebSocket was closed by the client (code 1000)")


def test_error_event_ends_its_call_and_the_socket_goes_on(ws_proxy: Proxy, rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        failed = turn(conn, model="gpt-5", input="hi", previous_response_id="resp_missing",
                      metadata=fake(terminal="error", error_status=400))
        ok = turn(conn, model="gpt-5", input="hi", metadata=fake(output=7))
    assert failed[-1].type == "error" and failed[-1].error.code == "previous_response_not_found"
    assert ok[-1].type == "response.completed"
    bad, good = rows.wait(key, 2)
    assert (bad["status"], bad["input_tokens"], bad["cost_usd"]) == (400, None, None)
    assert bad["error"] == ("HTTP 400: invalid_request_error: Previous response with id 'resp_missing' not found.")
    assert (good["status"], good["output_tokens"], good["error"]) == (200, 7, None)


@pytest.fixture(scope="module")
def keyed_ws(tmp_path_factory: pytest.TempPathFactory, ws_upstream: FakeWsUpstream, pg_url: str, pg_table: str
             ) -> Iterator[tuple[Proxy, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("wskeys")
    keys_file = tmp / "keys.toml"
    secrets = {name: f"llmp-{name}-{token_hex(12)}" for name in ("ws-mini", "ws-budget")}
    write_keyring(keys_file, KeyRing([
        VirtualKey("ws-mini", hash_secret(secrets["ws-mini"]), models=("gpt-5-mini*",)),
        VirtualKey("ws-budget", hash_secret(secrets["ws-budget"]), budget=Decimal("0.001"), period="1d"),
    ]))
    providers = write_providers(tmp / "providers.toml", ws_upstream.url)
    providers.write_text(providers.read_text().replace("[providers.openai]\n",
                                                       '[providers.openai]\napi_key_env = "OPENAI_API_KEY"\n'))
    p = Proxy(["--mode", f"reverse:{ws_upstream.url}@0", "--set", f"llm_providers={providers}",
               "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}", "--set", f"llm_keys={keys_file}",
               "--set", "llm_budget_refresh=1"], confdir=tmp / "conf", env=REAL_KEYS).start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p, secrets
    p.stop()


def test_keys_mode_checks_the_upgrade_and_swaps_in_the_real_key(keyed_ws, ws_upstream: FakeWsUpstream) -> None:
    proxy, secrets = keyed_ws
    seen = len(ws_upstream.handshakes)
    with pytest.raises(Exception, match="401"):
        with client(proxy, "llmp-not-a-key").responses.connect() as conn:
            turn(conn, model="gpt-5-mini", input="hi")
    assert len(ws_upstream.handshakes) == seen  # refused before any upstream handshake
    with client(proxy, secrets["ws-mini"]).responses.connect() as conn:
        assert turn(conn, model="gpt-5-mini", input="hi")[-1].type == "response.completed"
    headers = ws_upstream.handshakes[-1].headers
    assert headers["authorization"] == f"Bearer {REAL_KEYS['OPENAI_API_KEY']}"
    assert secrets["ws-mini"] not in json.dumps(headers)


def test_refused_create_gets_the_error_event_and_the_socket_keeps_working(keyed_ws, ws_upstream: FakeWsUpstream,
                                                                           rows: Rows) -> None:
    proxy, secrets = keyed_ws
    received = len(ws_upstream.received)
    with client(proxy, secrets["ws-mini"]).responses.connect() as conn:
        refused = turn(conn, model="gpt-5", input="not my model")
        allowed = turn(conn, model="gpt-5-mini", input="mine", metadata=fake(output=9))
    (error,) = refused
    assert (error.type, error.status, error.error.code, error.error.type) == (
        "error", 403, "model_not_allowed", "permission_error")
    assert error.error.message == "key 'ws-mini' may not use model 'gpt-5'"
    assert allowed[-1].type == "response.completed"
    assert [json.loads(m)["input"] for m in ws_upstream.received[received:]] == ["mine"]  # the refused one never left
    mine = rows.wait_for("key_id = %s AND request_body->>'input' IN ('not my model', 'mine')", ("ws-mini",), 2)
    assert [(r["status"], r["model"], r["cost_usd"], r["output_tokens"]) for r in mine] == [
        (403, "gpt-5", Decimal(0), None), (200, "gpt-5-mini", mine[1]["cost_usd"], 9)]
    assert mine[0]["error"] == "llm-proxy answered HTTP 403: key 'ws-mini' may not use model 'gpt-5'"
    assert mine[0]["upstream_url"] is None and mine[1]["cost_usd"] > 0


def test_budget_applies_per_create(keyed_ws, rows: Rows) -> None:
    proxy, secrets = keyed_ws
    with client(proxy, secrets["ws-budget"]).responses.connect() as conn:
        first = turn(conn, model="gpt-5", input="spend", metadata=fake(input=2000, cached=1000, output=500))
        assert first[-1].type == "response.completed"
        (refused,) = turn(conn, model="gpt-5", input="more")  # the spend counts from the moment the row is queued
        assert (refused.type, refused.status, refused.error.code) == ("error", 429, "insufficient_quota")
        assert refused.error.message.startswith("key 'ws-budget' has spent $0.006375 of its $0.001 1d budget")
        (again,) = turn(conn, model="gpt-5", input="still more")
        assert again.type == "error"  # refused again, on the same, still open socket
    spent, *refusals = rows.wait_for("key_id = %s", ("ws-budget",), 3)
    assert spent["cost_usd"] == Decimal("0.006375")
    assert [r["status"] for r in refusals] == [429, 429]


def test_codex_transcript_replayed_rows_exact(ws_proxy: Proxy, ws_upstream: FakeWsUpstream, rows: Rows) -> None:
    transcript = json.loads((FIXTURES / "codex_ws_transcript.json").read_text())
    ws_upstream.scripts["codex"] = [t["server"] for t in transcript["turns"]]
    key = new_key("sk-codex")
    headers = {**transcript["handshake_headers"], "x-fake-script": "codex"}
    received = len(ws_upstream.received)
    with client(ws_proxy, key).responses.connect(extra_headers=headers) as conn:
        for recorded in transcript["turns"]:
            conn.send_raw(recorded["client"])
            events = read_turn(conn)
            assert [e.sequence_number for e in events] == list(range(len(recorded["server"])))
    assert ws_upstream.received[received:] == [t["client"] for t in transcript["turns"]]  # byte for byte
    assert ws_upstream.handshakes[-1].headers["openai-beta"] == headers["openai-beta"]
    found = rows.wait(key, 2)
    for row, recorded in zip(found, transcript["turns"], strict=True):
        assert row["upstream_url"] == f"ws://127.0.0.1:{ws_upstream.port}/v1/responses"
        final = json.loads("".join(recorded["server"][-1]))["response"]
        usage = final["usage"]
        cached = usage["input_tokens_details"]["cached_tokens"]
        assert (row["model"], row["response_model"], row["status"], row["error"]) == (
            "gpt-5-codex", "gpt-5-codex", 200, None)
        assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
            usage["input_tokens"], cached, usage["output_tokens"], usage["output_tokens_details"]["reasoning_tokens"])
        assert row["cost_usd"] == gpt5_cost(usage["input_tokens"], cached, usage["output_tokens"])
        assert row["request_body"] == json.loads(recorded["client"])
        assert row["response_body"] == final
    assert (found[0]["input_tokens"], found[1]["cached_tokens"]) == (11234, 11008)
    assert found[0]["cost_usd"] == Decimal("0.0181625")  # (11234 * 1.25 + 412 * 10) / 1e6
    assert len(found[0]["request_body"]["tools"]) == 5 and found[1]["request_body"]["previous_response_id"]


def test_regular_mode_meters_a_socket_through_the_proxy_env(start_proxy: ProxyFactory, tmp_path: Path, pg_url: str,
                                                            rows: Rows, ws_upstream: FakeWsUpstream,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTPS_PROXY client (websockets tunnels through CONNECT): the provider host's socket is metered."""
    providers = write_providers(tmp_path / "providers.toml", ws_upstream.url)
    proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}", "--set", f"llm_db={pg_url}",
                         "--set", f"llm_table={rows.table}"])
    proxy.wait_for_log("llm-proxy writing rows to")
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    key = new_key()
    direct = openai.OpenAI(base_url=f"{ws_upstream.url}/v1", api_key=key, max_retries=0)
    with direct.responses.connect() as conn:
        events = turn(conn, model="gpt-5", input="hi", metadata=fake(input=2000, cached=1000, output=500))
    assert events[-1].type == "response.completed"
    (row,) = rows.wait(key)
    assert (row["method"], row["status"], row["input_tokens"], row["cost_usd"]) == ("WS", 200, 2000,
                                                                                    Decimal("0.006375"))
    assert row["upstream_url"] == f"ws://127.0.0.1:{ws_upstream.port}/v1/responses"


def test_a_proxy_stopped_with_a_socket_mid_response_writes_its_row(start_proxy: ProxyFactory, tmp_path: Path,
                                                                    pg_url: str, rows: Rows,
                                                                    ws_upstream: FakeWsUpstream) -> None:
    providers = write_providers(tmp_path / "providers.toml", ws_upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{ws_upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db={pg_url}", "--set", f"llm_table={rows.table}"])
    proxy.wait_for_log("llm-proxy writing rows to")
    key = new_key()
    with client(proxy, key).responses.connect() as conn:
        conn.response.create(model="gpt-5", input="hi", metadata=fake(pieces=200, delay=0.05))
        assert next(iter(conn)).type == "response.created"
        assert proxy.stop() == 0  # the socket's done() comes before the writer's last flush
    (row,) = rows.fetch("key_id = %s", (fingerprint(key),))
    assert row["status"] is None and row["output_tokens"] is None
    assert row["error"] == ("interrupted: llm-proxy stopped before the response ended "
                            "(the provider may have billed it)")


def test_hostile_client_frames_leave_the_socket_and_the_proxy_working(ws_proxy: Proxy, rows: Rows) -> None:
    key = new_key()
    with client(ws_proxy, key).responses.connect() as conn:
        for frame in (b"\x00\xff binary", "not json", "[" * 100_000, '{"type": ["response.create"]}',
                      '{"type": "response.steer", "input": "x"}'):
            conn.send_raw(frame)
            (answer,) = read_turn(conn)  # the upstream's own error event: the message reached it, unmetered
            assert (answer.type, answer.error.code) == ("error", "unknown_event")
        assert turn(conn, model="gpt-5", input="still here", metadata=fake(output=4))[-1].type == "response.completed"
    (row,) = rows.wait(key)  # only the response.create is a call
    assert (row["output_tokens"], row["request_body"]["input"]) == (4, "still here")
