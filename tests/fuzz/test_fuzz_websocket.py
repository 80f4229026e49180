"""The WebSocket hooks under hostile frames, in-process: nothing ever raises out of them.

Client and server frames of any kind (text or binary, not JSON, 100,000 levels
deep, too big to read, response.create with garbage where the model or lane
belongs, terminal events with hostile usage, stray error events) go through
the real addons' request / websocket_start / websocket_message / websocket_end
hooks. Invariants: no exception; one row per response.create (refused,
answered or cut off by the socket's end) and at most one per response the
server started by itself, each with a unique request_id, token counts NULL
or non-negative, cost NULL or non-negative.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from llm_proxy.addon import LLMProxy
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.keys.store import write_keyring
from llm_proxy.paths import DEFAULT_PRICING, DEFAULT_PROVIDERS
from llm_proxy.record import Record
from llm_proxy.websocket import turns
from llm_proxy.websocket.addon import ResponsesWebSocket
from llm_proxy.websocket.turns import read_client_message

from .strategies import count_value, deep_value, dump, json_value, model_value, openai_usage

CLIENT_KEY = "llmp-fuzz-ws-client-key-0123456789"
REAL_KEY = "sk-real-fuzz-ws-4c1d"
SMALL_LIMIT = 4096  # MAX_PARSED_BYTES while fuzzing, so "too big to read" is cheap to reach
LANES = st.one_of(st.none(), st.sampled_from(["a", "b"]), json_value)
CLIENT_TYPES = st.sampled_from(["response.create", "response.create", "response.steer", "session.update", None])
SERVER_TYPES = st.sampled_from([
    "response.created", "response.output_text.delta", "response.completed", "response.incomplete",
    "response.failed", "error", "response.steer.accepted", None,
])


def _with(fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**fields, **{k: v for k, v in extra.items() if v is not None}}


@st.composite
def client_frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        event = _with({"type": draw(CLIENT_TYPES), "input": draw(json_value)}, model=draw(model_value),
                      stream_id=draw(LANES))
        return dump(event).encode("utf-8", "surrogatepass")
    if kind == 3:
        return dump(draw(deep_value)).encode()
    if kind == 4:
        return b'{"type": "response.create", "input": "' + b"x" * draw(st.integers(0, 2 * SMALL_LIMIT)) + b'"}'
    return draw(st.binary(max_size=64))


@st.composite
def server_frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind <= 2:
        response = draw(st.one_of(
            st.fixed_dictionaries({"model": model_value, "usage": openai_usage(responses=True),
                                   "status": st.sampled_from(["completed", "failed"])}),
            json_value))
        event = _with({"type": draw(SERVER_TYPES)}, response=response, stream_id=draw(LANES),
                      status=draw(st.one_of(st.none(), count_value)),
                      error=draw(st.one_of(st.none(), json_value)))
        return dump(event).encode("utf-8", "surrogatepass")
    if kind == 3:
        return dump(draw(deep_value)).encode()
    return draw(st.binary(max_size=64))


frames = st.lists(st.one_of(st.tuples(st.just(True), client_frame(), st.booleans()),
                            st.tuples(st.just(False), server_frame(), st.booleans())), max_size=14)


@pytest.fixture(scope="module", params=[False, True], ids=["passthrough", "keys"])
def hooks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ResponsesWebSocket, list[Record]]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-ws")
    saved = {name: os.environ.get(name) for name in ("LLM_PROXY_HOME", "OPENAI_API_KEY")}
    limit = turns.MAX_PARSED_BYTES
    os.environ["LLM_PROXY_HOME"] = str(tmp)
    os.environ["OPENAI_API_KEY"] = REAL_KEY
    keys_file = ""
    if request.param:
        keys_file = str(tmp / "keys.toml")
        write_keyring(Path(keys_file), KeyRing([VirtualKey(name="fuzzer", hash=hash_secret(CLIENT_KEY),
                                                           prefix=CLIENT_KEY[:9])]))
    turns.MAX_PARSED_BYTES = SMALL_LIMIT
    metering = LLMProxy()
    websocket = ResponsesWebSocket(metering)
    rows: list[Record] = []
    metering.record_listeners.append(rows.append)
    try:
        with taddons.context(proxyserver.Proxyserver(), websocket, metering) as tctx:
            tctx.configure(metering, llm_db=f"sqlite:///{tmp / 'rows.db'}", llm_providers=str(DEFAULT_PROVIDERS),
                           llm_pricing=str(DEFAULT_PRICING), llm_keys=keys_file, llm_max_concurrent=0, llm_retries=0)
            try:
                yield websocket, rows
            finally:
                websocket.done()
                metering.done()
    finally:
        turns.MAX_PARSED_BYTES = limit
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def socket_flow():
    flow = tflow.twebsocketflow(messages=False)
    upgraded = flow.response
    flow.response = None
    flow.live = True
    request = flow.request
    request.scheme, request.host, request.port, request.path = "https", "api.openai.com", 443, "/v1/responses"
    request.headers["authorization"] = f"Bearer {CLIENT_KEY}"
    return flow, upgraded


@given(messages=frames)
def test_hostile_frames_never_raise_out_of_the_hooks(hooks: tuple[ResponsesWebSocket, list[Record]],
                                                     messages: list[tuple[bool, bytes, bool]]) -> None:
    websocket, rows = hooks
    rows.clear()
    flow, upgraded = socket_flow()
    websocket.request(flow)
    assert flow.response is None  # passthrough: the upgrade goes on
    flow.response = upgraded
    websocket.websocket_start(flow)

    async def relay() -> None:
        for from_client, content, is_text in messages:
            flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT if is_text else Opcode.BINARY,
                                                            from_client, content))
            await websocket.websocket_message(flow)

    asyncio.run(relay())
    websocket.websocket_end(flow)
    creates = sum(1 for from_client, content, _ in messages if from_client and read_client_message(content).create)
    started = sum(1 for from_client, content, _ in messages if not from_client and b'"response.created"' in content)
    asked = [r for r in rows if r.request_body is not None]  # a response.create's row has its body
    assert len(asked) == creates
    assert len(rows) - creates <= started  # the rest: responses the server started by itself
    assert len({r.request_id for r in rows}) == len(rows)
    for row in rows:
        for count in (row.input_tokens, row.output_tokens, row.total_tokens, row.cached_tokens,
                      row.cache_write_tokens, row.reasoning_tokens):
            assert count is None or (isinstance(count, int) and count >= 0)
        assert row.cost_usd is None or row.cost_usd >= 0
        assert row.method == "WS" and row.key_id is not None
        assert CLIENT_KEY not in repr(row) and REAL_KEY not in repr(row)
    if websocket.metering.access.keys_required:
        assert flow.request.headers["authorization"] == f"Bearer {REAL_KEY}"  # the virtual key never goes upstream
        assert {row.key_id for row in rows} <= {"fuzzer"}
