"""Pairing a Responses WebSocket's messages into calls, and the rows and events they become."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import http

from llm_proxy import apis
from llm_proxy.calls import Call
from llm_proxy.config.providers import Provider, generic_provider
from llm_proxy.routing import Route
from llm_proxy.websocket import turns
from llm_proxy.websocket.records import Socket, error_event, refused_record, turn_record
from llm_proxy.websocket.turns import Pairing, Turn, read_client_message
from llm_proxy.websocket.upgrade import admit_socket, is_upgrade, ws_url

ROUTE = Route(generic_provider("api.openai.com", "https", 443), apis.OPENAI_RESPONSES)
SOCKET = Socket("f1", "/v1/responses", "wss://api.openai.com/v1/responses", "10.0.0.7")


def event(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


def completed(usage: dict[str, Any] | None = None, model: str = "gpt-5-2025-08-07", **fields: Any) -> bytes:
    return event("response.completed", response={"id": "resp_1", "status": "completed", "model": model,
                                                 "usage": usage, "output": []}, **fields)


def new_turn(pairing: Pairing, at: float, stream_id: str | None = None, body: bytes = b"{}") -> Turn:
    call = Call(route=ROUTE, model="gpt-5", streaming=True, strip_usage_chunk=False, request_body=body,
                key_id="fp-1", path="/v1/responses")
    turn = Turn(number=pairing.next_number(), started=at, call=call, stream_id=stream_id)
    pairing.open(turn)
    return turn


@pytest.mark.parametrize(("content", "create", "model", "lane"), [
    (b'{"type": "response.create", "model": "gpt-5", "input": "hi"}', True, "gpt-5", None),
    (b'{"type": "response.create", "model": ["x"], "stream_id": "lane-2"}', True, None, "lane-2"),
    (b'{"type": "response.create", "model": "gpt-5", "stream_id": 7}', True, "gpt-5", None),
    (b'{"type": "response.create", "response": {"model": "gpt-5-codex"}}', True, "gpt-5-codex", None),
    (b'{"type": "response.steer", "input": "also this"}', False, None, None),
    (b'{"type": ["response.create"]}', False, None, None),
    (b"not json", False, None, None),
    (b"\xff\xfe binary", False, None, None),
    (b"[" * 100_000 + b"]" * 100_000, False, None, None),
    (b"", False, None, None),
])
def test_only_a_response_create_is_a_call(content: bytes, create: bool, model: str | None, lane: str | None) -> None:
    info = read_client_message(content)
    assert (info.create, info.model, info.stream_id, info.too_large) == (create, model, lane, False)


def test_a_message_too_big_to_read_counts_as_a_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turns, "MAX_PARSED_BYTES", 64)
    info = read_client_message(b'{"type": "response.steer", "input": "' + b"x" * 100 + b'"}')
    assert (info.create, info.too_large) == (True, True)  # unread, it could be one: refused like one


def test_events_pair_with_the_oldest_turn_and_the_terminal_one_ends_it() -> None:
    pairing = Pairing()
    first = new_turn(pairing, 100.0)
    assert pairing.server_message(event("response.created", response={"model": "gpt-5-2025-08-07"}), 100.2) is None
    assert pairing.server_message(event("response.output_text.delta", delta="hi"), 100.3) is None
    second = new_turn(pairing, 100.4)  # sent before the first's answer ended: it waits its turn
    ended = pairing.server_message(completed({"input_tokens": 10, "output_tokens": 4,
                                              "input_tokens_details": {"cached_tokens": 8},
                                              "output_tokens_details": {"reasoning_tokens": 3}}), 101.0)
    assert ended is first and list(pairing.pending) == [second]
    assert (first.first_event_at, first.ended_at, first.terminal, first.events) == (100.2, 101.0, "response.completed", 3)
    usage = first.parser.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.reasoning_tokens) == (10, 4, 8, 3)
    assert second.first_event_at is None
    assert pairing.server_message(event("error", status=400, error={"type": "invalid_request_error",
                                                                   "message": "bad"}), 102.0) is second
    assert (second.terminal, second.error_status, second.parser.error) == ("error", 400, "invalid_request_error: bad")
    assert not pairing.pending


@pytest.mark.parametrize("kind", ["response.completed", "response.incomplete", "response.failed", "error"])
def test_every_terminal_event_ends_a_turn(kind: str) -> None:
    pairing = Pairing()
    turn = new_turn(pairing, 1.0)
    assert pairing.server_message(event(kind, response={"status": "x", "usage": None}), 2.0) is turn
    assert turn.terminal == kind


def test_a_stream_id_picks_its_lane() -> None:
    pairing = Pairing()
    a = new_turn(pairing, 1.0, "lane-a")
    b = new_turn(pairing, 1.1, "lane-b")
    assert pairing.server_message(event("response.created", stream_id="lane-b", response={}), 1.2) is None
    assert (a.first_event_at, b.first_event_at) == (None, 1.2)
    assert pairing.server_message(completed(stream_id="lane-b"), 1.5) is b
    assert pairing.server_message(completed(stream_id="lane-unknown"), 1.6) is a  # no such lane: the oldest


def test_events_with_nothing_pending_and_garbage_are_passed_over() -> None:
    pairing = Pairing()
    assert pairing.server_message(completed(), 1.0) is None  # nothing asked for
    turn = new_turn(pairing, 2.0)
    junk = (b"", b"\x00\xff", b"[1, 2]", b"[" * 50_000, json.dumps({"type": ["error"]}).encode(),
            json.dumps({"type": "response.output_text.delta", "delta": ["x"]}).encode())
    for content in junk:
        assert pairing.server_message(content, 2.5) is None
    assert (turn.terminal, turn.events, turn.unread_events) == (None, 6, 4)
    # A terminal event ends its turn whatever it holds; its usage is then unknown, not zero.
    assert pairing.server_message(event("response.completed", response="no"), 3.0) is turn
    assert (turn.parser.usage.input_tokens, turn.parser.usage.output_tokens) == (None, None)


def test_an_error_event_status_is_kept_only_when_it_is_an_http_status() -> None:
    for status, kept in ((429, 429), (True, None), (99, None), ("400", None), (600, None)):
        pairing = Pairing()
        turn = new_turn(pairing, 1.0)
        pairing.server_message(event("error", status=status, error={"message": "m"}), 1.1)
        assert turn.error_status == kept


def test_the_socket_closing_leaves_the_pending_turns_in_order() -> None:
    pairing = Pairing()
    turns_opened = [new_turn(pairing, float(i)) for i in range(3)]
    assert pairing.close() == turns_opened and not pairing.pending
    assert [t.number for t in turns_opened] == [1, 2, 3] and pairing.count == 3


def test_a_finished_turn_row() -> None:
    pairing = Pairing()
    body = b'{"type": "response.create", "model": "gpt-5", "input": "hi"}'
    turn = new_turn(pairing, 1_764_480_000.0, body=body)
    pairing.server_message(event("response.created", response={"model": "gpt-5-2025-08-07"}), 1_764_480_000.25)
    pairing.server_message(completed({"input_tokens": 10, "output_tokens": 4}), 1_764_480_001.5)
    record, usage = turn_record(SOCKET, turn, log_bodies=True)
    assert (record.request_id, record.method, record.path, record.upstream_url, record.client_addr) == (
        "f1.1", "WS", "/v1/responses", "wss://api.openai.com/v1/responses", "10.0.0.7")
    assert (record.ttft_ms, record.duration_ms, record.status, record.error, record.streaming) == (
        250, 1500, 200, None, True)
    assert (record.model, record.response_model, record.key_id) == ("gpt-5", "gpt-5-2025-08-07", "fp-1")
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (10, 4, 14) and usage.total_tokens == 14
    assert record.request_body == body and record.response_body["id"] == "resp_1"
    assert turn_record(SOCKET, turn, log_bodies=False)[0].request_body is None


def test_an_interrupted_turn_row() -> None:
    pairing = Pairing()
    turn = new_turn(pairing, 10.0)
    pairing.server_message(event("response.created", response={"model": "gpt-5"}), 10.5)
    (left,) = pairing.close()
    left.ended_at = 12.0
    record, _ = turn_record(SOCKET, left, log_bodies=True, interrupted="interrupted: gone")
    assert (record.status, record.error, record.duration_ms, record.input_tokens) == (None, "interrupted: gone", 2000, None)
    assert record.response_body == {"stream_events": [{"type": "response.created", "response": {"model": "gpt-5"}}]}


def test_a_refused_turn_row_and_its_error_event() -> None:
    turn = new_turn(Pairing(), 5.0)
    record = refused_record(SOCKET, turn, 429, "key 'k' is over its limit of 1 requests per minute", log_bodies=True)
    assert (record.status, record.error, record.upstream_url, record.cost_usd) == (
        429, "llm-proxy answered HTTP 429: key 'k' is over its limit of 1 requests per minute", None, None)
    assert json.loads(error_event(429, "over", "rate_limit")) == {
        "type": "error", "status": 429,
        "error": {"message": "over", "type": "rate_limit_exceeded", "param": None, "code": "rate_limit"}}


def test_upgrade_recognition_and_ws_urls() -> None:
    def request(method: str, upgrade: str | None) -> http.Request:
        headers = http.Headers(upgrade=upgrade) if upgrade is not None else http.Headers()
        return http.Request.make(method, "https://api.openai.com/v1/responses", headers=headers)

    assert is_upgrade(request("GET", "websocket")) and is_upgrade(request("GET", " WebSocket "))
    assert not is_upgrade(request("POST", "websocket")) and not is_upgrade(request("GET", None))
    assert not is_upgrade(request("GET", "h2c"))
    assert ws_url("https://h/v1/responses") == "wss://h/v1/responses"
    assert ws_url("http://h:8/v1/responses") == "ws://h:8/v1/responses"


def test_a_response_the_server_starts_by_itself_is_a_turn_too() -> None:
    made: list[float] = []

    def successor(now: float) -> Turn:
        made.append(now)
        call = Call(route=ROUTE, model=None, streaming=True, strip_usage_chunk=False, request_body=None,
                    key_id="fp-1", path="/v1/responses")
        return Turn(number=pairing.next_number(), started=now, call=call)

    pairing = Pairing(successor)
    assert pairing.server_message(event("response.output_text.delta", delta="x"), 1.0) is None and not made
    assert pairing.server_message(b"not json", 1.1) is None and not made
    first = new_turn(pairing, 2.0)
    assert pairing.server_message(completed({"input_tokens": 5, "output_tokens": 1}), 2.5) is first
    # The API's automatic successor: response.created with no response.create pending.
    assert pairing.server_message(event("response.created", response={"model": "gpt-5-2025-08-07"},
                                        stream_id="lane-s"), 3.0) is None
    (started,) = pairing.pending
    assert (made, started.successor, started.number, started.stream_id, started.first_event_at) == (
        [3.0], True, 2, "lane-s", 3.0)
    assert pairing.server_message(completed({"input_tokens": 7, "output_tokens": 2}), 4.0) is started
    record, _ = turn_record(SOCKET, started, log_bodies=True)
    assert (record.request_id, record.model, record.request_body, record.input_tokens, record.duration_ms) == (
        "f1.2", "gpt-5-2025-08-07", None, 7, 1000)


def test_a_turn_whose_row_cannot_be_built_still_gets_a_bare_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_proxy.websocket import addon as ws_addon

    class Metering:
        log_bodies = True
        pricer = None  # pricing a row raises: the row must still be delivered

        def __init__(self) -> None:
            self.delivered: list[Any] = []

        def deliver(self, call: Call, record: Any) -> None:
            self.delivered.append(record)

    metering = Metering()
    websocket = ws_addon.ResponsesWebSocket(metering)  # type: ignore[arg-type]
    pairing = Pairing()
    turn = new_turn(pairing, 1.0)
    session = ws_addon.Session(ROUTE, ws_addon.Credential("h", "fp-1"), SOCKET, pairing)
    flow = type("Flow", (), {"comment": ""})()
    websocket._finish(flow, session, turn)  # type: ignore[arg-type]
    (record,) = metering.delivered
    assert (record.request_id, record.key_id, record.input_tokens) == ("f1.1", "fp-1", None)
    assert record.error == "llm-proxy could not read this call's answer (AttributeError); tokens and cost unknown"


def test_the_control_plane_does_not_hold_websocket_turns_for_a_final_hook() -> None:
    from llm_proxy.addon import LLMProxy
    from llm_proxy.control.addon import ControlPlane

    control = ControlPlane(LLMProxy())
    pairing = Pairing()
    record, _ = turn_record(SOCKET, new_turn(pairing, 1.0), log_bodies=False)
    control._observe(record)
    assert not control._finished  # no flow has this id: it would stay there for ever


def _keyed_access(*keys: Any, real: str | None = "sk-real-1") -> Any:
    from llm_proxy.access import Access
    from llm_proxy.keys.model import KeyRing

    access = Access()
    access.use_keys_file(KeyRing(list(keys)))
    if real:
        access.provider_keys = {"openai": real}
    return access


OPENAI = Route(Provider("openai", "https://api.openai.com", "openai", ("api.openai.com",), api_key_env="OPENAI_API_KEY"),
               apis.OPENAI_RESPONSES)


def _upgrade(secret: str | None, path: str = "/v1/responses") -> http.Request:
    headers = http.Headers(upgrade="websocket", connection="Upgrade")
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    return http.Request.make("GET", f"https://api.openai.com{path}", headers=headers)


def test_the_upgrade_checks_the_virtual_key_and_swaps_in_the_real_one() -> None:
    from llm_proxy.keys.model import VirtualKey, hash_secret

    access = _keyed_access(VirtualKey("dev", hash_secret("llmp-dev-secret")),
                           VirtualKey("off", hash_secret("llmp-off-secret"), disabled=True))
    request = _upgrade("llmp-dev-secret", "/v1/responses?key=llmp-dev-secret")
    credential, refusal = admit_socket(access, request, OPENAI)
    assert refusal is None and (credential.key_id, credential.key_hash) == ("dev", hash_secret("llmp-dev-secret"))
    assert request.headers["authorization"] == "Bearer sk-real-1" and "llmp" not in request.path
    for secret, status, code in ((None, 401, "missing_api_key"), ("llmp-nobody", 401, "invalid_api_key"),
                                 ("llmp-off-secret", 403, "key_disabled")):
        request = _upgrade(secret)
        _, refusal = admit_socket(access, request, OPENAI)
        assert refusal is not None and (refusal.status, refusal.code) == (status, code)
        assert request.headers.get("authorization") == (f"Bearer {secret}" if secret else None)  # not forwarded anyway
    no_real = _keyed_access(VirtualKey("dev", hash_secret("llmp-dev-secret")), real=None)
    _, refusal = admit_socket(no_real, _upgrade("llmp-dev-secret"), OPENAI)
    assert refusal is not None and (refusal.status, refusal.code) == (500, "provider_key_missing")


def test_passthrough_upgrade_keeps_the_clients_key_and_fingerprints_it() -> None:
    from llm_proxy.access import Access
    from llm_proxy.redact import fingerprint

    request = _upgrade("sk-client-own")
    credential, refusal = admit_socket(Access(), request, OPENAI)
    assert refusal is None and credential.key_id == fingerprint("sk-client-own")
    assert request.headers["authorization"] == "Bearer sk-client-own"


def test_a_response_create_names_its_output_bound_for_tpm_and_budget_estimates() -> None:
    flat = read_client_message(b'{"type": "response.create", "model": "gpt-5", "max_output_tokens": 700}')
    nested = read_client_message(b'{"type": "response.create", "response": {"model": "gpt-5", "max_output_tokens": 90}}')
    unbounded = read_client_message(b'{"type": "response.create", "model": "gpt-5"}')
    assert (flat.max_output, nested.max_output, unbounded.max_output) == (700, 90, None)
