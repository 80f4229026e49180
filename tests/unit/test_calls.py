"""open_call / close_call on mitmproxy test flows, and the mitmweb comment line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from mitmproxy import flow as mflow
from mitmproxy.http import Headers
from mitmproxy.test import tflow, tutils

from llm_proxy import apis
from llm_proxy.calls import close_call, comment, open_call
from llm_proxy.config.providers import load_providers
from llm_proxy.paths import DEFAULT_PROVIDERS
from llm_proxy.record import Record
from llm_proxy.routing import route_request
from llm_proxy.stream.framing import SSEDecoder
from llm_proxy.stream.meter import StreamMeter
from llm_proxy.usage import stream_parser
from tests.unit import transcripts as T

PROVIDERS = load_providers(DEFAULT_PROVIDERS, env={})
KEY = "sk-proj-TESTKEY123"
KEY_FP = "fp-668d08330cb0"
T0 = 946681200  # treq's timestamp_start


def make_flow(path: str, body: bytes | dict | None = None, *, method: str = "POST", host: str = "localhost",
              port: int = 8080, headers: dict[str, str] | None = None):
    content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    fields = [(b"host", f"{host}:{port}".encode()), (b"content-type", b"application/json"),
              (b"accept-encoding", b"gzip, deflate, br"), (b"content-length", str(len(content)).encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    req = tutils.treq(method=method.encode(), scheme=b"http", host=host, port=port, authority=b"",
                      path=path.encode(), headers=Headers(fields), content=content)
    return tflow.tflow(req=req)


def opened(path: str, body=None, **kw):
    flow = make_flow(path, body, **kw)
    route = route_request(PROVIDERS, reverse=True, scheme="http", host=flow.request.host,
                          port=flow.request.port, path=flow.request.path)
    return flow, open_call(flow, route)


def json_response(status: int, body, reason: bytes = b"OK") -> object:
    content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return tutils.tresp(status_code=status, reason=reason, content=content,
                        headers=Headers([(b"content-type", b"application/json"),
                                         (b"content-length", str(len(content)).encode())]))


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Bonjour"}]}


# --- open_call ---------------------------------------------------------------------------

def test_open_call_injects_include_usage_for_streaming_chat():
    flow, call = opened("/openai/v1/chat/completions", {**CHAT, "stream": True},
                        headers={"authorization": f"Bearer {KEY}"})
    sent = json.loads(flow.request.content)
    assert sent == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert flow.request.headers["content-length"] == str(len(flow.request.content))
    assert call.strip_usage_chunk is True
    assert json.loads(call.request_body) == {**CHAT, "stream": True}  # the client's body is what is stored
    assert (call.model, call.streaming, call.key_id) == ("gpt-4o-mini", True, KEY_FP)
    assert call.route.api == apis.OPENAI_CHAT
    assert flow.request.url == "https://api.openai.com/v1/chat/completions"
    assert flow.request.host == "api.openai.com"
    assert flow.request.headers["accept-encoding"] == "identity"
    assert call.path == "/openai/v1/chat/completions"


def test_open_call_keeps_other_stream_options():
    flow, call = opened("/openai/v1/chat/completions",
                        {**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}})
    assert json.loads(flow.request.content)["stream_options"] == {"include_obfuscation": False,
                                                                  "include_usage": True}
    assert call.strip_usage_chunk is True


def test_open_call_overrides_include_usage_false_and_hides_the_chunk():
    flow, call = opened("/openai/v1/chat/completions",
                        {**CHAT, "stream": True, "stream_options": {"include_usage": False}})
    assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
    assert call.strip_usage_chunk is True


def test_open_call_injects_for_streaming_legacy_completions():
    flow, call = opened("/openai/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi",
                                                   "stream": True})
    assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
    assert call.strip_usage_chunk is True


@pytest.mark.parametrize("path,body", [
    ("/openai/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/openai/v1/chat/completions", CHAT),
    ("/openai/v1/chat/completions", {**CHAT, "stream": False}),
    ("/openai/v1/responses", {"model": "o4-mini", "input": "Hi", "stream": True}),
    ("/anthropic/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                                "messages": [{"role": "user", "content": "Hi"}]}),
    ("/ollama/api/chat", {"model": "llama3.1:8b", "messages": []}),
    ("/openai/v1/embeddings", {"model": "text-embedding-3-small", "input": "Hi"}),
])
def test_open_call_leaves_other_bodies_byte_identical(path, body):
    raw = json.dumps(body, indent=1).encode()  # formatting a re-dump would change
    flow, call = opened(path, raw)
    assert flow.request.content == raw
    assert call.strip_usage_chunk is False
    assert json.loads(call.request_body) == body
    assert flow.request.headers["accept-encoding"] == "identity"


def test_open_call_gemini_key_in_query_is_masked():
    path = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIzaSyTESTKEY"
    flow, call = opened(path, {"contents": [{"parts": [{"text": "Hi"}]}]})
    assert call.path == "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=***"
    assert (call.model, call.streaming, call.key_id) == ("gemini-2.5-flash", True, "fp-51761570bd52")
    assert call.route.api == apis.GEMINI_GENERATE
    # The upstream still gets the key, in Gemini's header: in no URL mitmproxy prints or saves.
    assert flow.request.url.endswith("?alt=sse") and flow.request.headers["x-goog-api-key"] == "AIzaSyTESTKEY"
    assert call.strip_usage_chunk is False


def test_open_call_provider_without_injection_keeps_the_body():
    raw = json.dumps({"model": "mistral-small-latest", "messages": [], "stream": True}).encode()
    flow, call = opened("/mistral/v1/chat/completions", raw)
    assert call.route.provider.inject_stream_usage is False
    assert flow.request.content == raw
    assert call.strip_usage_chunk is False
    assert flow.request.url == "https://api.mistral.ai/v1/chat/completions"


def test_open_call_unmetered_path_keeps_accept_encoding():
    flow, call = opened("/openai/v1/models", None, method="GET", headers={"x-api-key": "k"})
    assert call.route.api == apis.OTHER
    assert flow.request.headers["accept-encoding"] == "gzip, deflate, br"
    assert call.request_body is None
    assert call.model is None
    assert flow.request.url == "https://api.openai.com/v1/models"


def test_open_call_non_json_body_is_described_not_stored():
    flow, call = opened("/openai/v1/chat/completions", b"\x00\x01binary")
    assert call.request_body == {"non_json_bytes": 8}
    assert call.model is None and call.streaming is False
    assert flow.request.content == b"\x00\x01binary"


def test_open_call_without_key_has_no_key_id():
    _, call = opened("/ollama/api/generate", {"model": "qwen3:4b", "prompt": "Hi", "stream": False})
    assert call.key_id is None
    assert call.streaming is False


# --- close_call --------------------------------------------------------------------------

def test_close_call_json_response():
    flow, call = opened("/openai/v1/chat/completions", CHAT, headers={"authorization": f"Bearer {KEY}"})
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Salut"},
                         "finish_reason": "stop"}], "usage": T.USAGE_WITH_DETAILS}
    flow.response = json_response(200, body)
    record, outcome = close_call(flow, call, log_bodies=True)
    assert record.request_id == flow.id
    assert record.ts == datetime(1999, 12, 31, 23, 0, tzinfo=UTC)
    assert (record.duration_ms, record.ttft_ms) == (3000, 2000)
    assert (record.provider, record.api, record.method, record.path) == (
        "openai", "openai-chat", "POST", "/openai/v1/chat/completions")
    assert record.upstream_url == "https://api.openai.com/v1/chat/completions"
    assert (record.model, record.response_model, record.key_id) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", KEY_FP)
    assert (record.streaming, record.status, record.error) == (False, 200, None)
    assert (record.input_tokens, record.output_tokens, record.total_tokens, record.cached_tokens,
            record.cache_write_tokens, record.reasoning_tokens) == (1204, 312, 1516, 1024, 0, 64)
    assert record.cost_usd is None  # pricing is the caller's
    assert json.loads(record.request_body) == CHAT
    assert json.loads(record.response_body) == body
    assert record.client_addr == "127.0.0.1"
    assert outcome.usage.total_tokens == 1516
    assert outcome.response_model == "gpt-4o-mini-2024-07-18"


def test_close_call_429_error_text():
    flow, call = opened("/openai/v1/chat/completions", CHAT)
    error = {"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min "
                                  "(RPM): Limit 3, Used 3, Requested 1.", "type": "requests", "param": None,
                       "code": "rate_limit_exceeded"}}
    flow.response = json_response(429, error, reason=b"Too Many Requests")
    record, outcome = close_call(flow, call, log_bodies=True)
    assert record.status == 429
    assert record.error == ("HTTP 429: requests: Rate limit reached for gpt-4o-mini in organization org-x on "
                            "requests per min (RPM): Limit 3, Used 3, Requested 1.")
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (None, None, None)
    assert json.loads(record.response_body) == error
    assert outcome.usage.known is False


@pytest.mark.parametrize("path,body,error", [
    ("/anthropic/v1/messages", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     "HTTP 529: overloaded_error: Overloaded"),
    ("/gemini/v1beta/models/gemini-2.5-pro:generateContent",
     {"error": {"code": 529, "message": "busy", "status": "UNAVAILABLE"}}, "HTTP 529: UNAVAILABLE: busy"),
    ("/ollama/api/chat", {"error": "model 'llama9' not found"}, "HTTP 529: model 'llama9' not found"),
])
def test_close_call_error_shapes(path, body, error):
    flow, call = opened(path, {"model": "m", "stream": False})
    flow.response = json_response(529, body, reason=b"")
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == error


def test_close_call_non_json_error_uses_reason():
    flow, call = opened("/openai/v1/chat/completions", CHAT)
    html = b"<html><body>502 Bad Gateway</body></html>"
    flow.response = json_response(502, html, reason=b"Bad Gateway")
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == "HTTP 502: Bad Gateway"
    assert record.response_body == {"non_json_bytes": len(html)}


def test_close_call_without_bodies():
    flow, call = opened("/openai/v1/embeddings", {"model": "text-embedding-3-small", "input": "Hi"})
    flow.response = json_response(200, {"object": "list", "data": [], "model": "text-embedding-3-small",
                                        "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    record, _ = close_call(flow, call, log_bodies=False)
    assert (record.request_body, record.response_body) == (None, None)
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (8, 0, 8)


def test_close_call_streamed_with_meter_and_client_disconnect():
    flow, call = opened("/openai/v1/chat/completions", {**CHAT, "stream": True})
    call.meter = StreamMeter(stream_parser(call.route.api, strip_usage_chunk=True), SSEDecoder(), strip=True)
    data, usage_raw = T.openai_chat_stream()
    out = call.meter(data[:500])
    assert out == [data[:data[:500].rindex(b"\n\n") + 2]]  # complete events only; the tail waits
    call.meter(data[500:])
    flow.response = tutils.tresp(content=b"", headers=Headers(content_type="text/event-stream"))
    call.meter.first_byte_at = T0 + 0.25
    flow.error = mflow.Error("client disconnected")
    record, outcome = close_call(flow, call, log_bodies=True)
    assert call.meter.ended is True
    assert record.ttft_ms == 250
    assert record.streaming is True
    # The client hung up after [DONE] (SDKs do): it lost nothing, so that is no error.
    assert record.error is None
    assert (record.input_tokens, record.output_tokens, record.cached_tokens, record.reasoning_tokens) == (
        1204, 312, 1024, 64)
    assert record.response_model == "gpt-4o-mini-2024-07-18"
    assert record.response_body["choices"][0]["message"]["content"] == "Bonjour — ça va? 日本"


def test_close_call_stream_error_and_meter_error():
    flow, call = opened("/anthropic/v1/messages", {"model": "claude-sonnet-4-5", "stream": True})
    call.meter = StreamMeter(stream_parser(call.route.api), SSEDecoder(), strip=False)
    call.meter(T.anthropic_overloaded_stream())
    call.meter(b"")
    flow.response = tutils.tresp(content=b"")
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == "overloaded_error: Overloaded"
    assert (record.input_tokens, record.output_tokens) == (812, 3)
    flow.error = mflow.Error("Client disconnected.")  # SDKs hang up on an error event; that is not news
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == "overloaded_error: Overloaded"

    flow, call = opened("/anthropic/v1/messages", {"model": "claude-sonnet-4-5", "stream": True})
    call.meter = StreamMeter(stream_parser(call.route.api), SSEDecoder(max_event_bytes=16), strip=False)
    call.meter(b"event: message_start\ndata: {")
    flow.response = tutils.tresp(content=b"")
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == "an event grew past 16 bytes; usage not metered"
    assert record.input_tokens is None


def test_close_call_no_response_at_all():
    flow, call = opened("/openai/v1/chat/completions", CHAT)
    flow.response = None
    flow.error = mflow.Error("Connection refused")
    record, _ = close_call(flow, call, log_bodies=True)
    assert (record.status, record.error, record.ttft_ms) == (None, "Connection refused", None)
    assert record.response_body is None


# --- comment -----------------------------------------------------------------------------

def rec(**kw) -> Record:
    return Record(request_id="r", ts=datetime(2026, 1, 1, tzinfo=UTC), **kw)


@pytest.mark.parametrize("fields,line", [
    (dict(model="gpt-4o-mini", input_tokens=1204, output_tokens=312, cost_usd=Decimal("0.00037")),
     "gpt-4o-mini · 1,204→312 tok · $0.00037"),
    (dict(model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", input_tokens=1204, output_tokens=312,
          cost_usd=Decimal("0.000291")), "gpt-4o-mini-2024-07-18 · 1,204→312 tok · $0.000291"),
    (dict(model="claude-sonnet-4-5", input_tokens=405700, output_tokens=943, cost_usd=Decimal("1.331745")),
     "claude-sonnet-4-5 · 405,700→943 tok · $1.33"),
    (dict(model="text-embedding-3-small", input_tokens=8, output_tokens=0, cost_usd=Decimal("0.00000016")),
     "text-embedding-3-small · 8→0 tok · $1.6e-7"),
    (dict(model="llama3.1:8b", input_tokens=26, output_tokens=290, cost_usd=Decimal(0)),
     "llama3.1:8b · 26→290 tok · $0"),
    (dict(model="mystery-model", input_tokens=10, output_tokens=None), "mystery-model · 10→0 tok · $?"),
    (dict(api="openai-chat", status=429, error="HTTP 429: requests: " + "x" * 100),
     "openai-chat · $? · HTTP 429: requests: " + "x" * 60),
    (dict(), "? · $?"),
    (dict(model="o3", input_tokens=1, output_tokens=1, cost_usd=Decimal("0.123456")), "o3 · 1→1 tok · $0.1235"),
    (dict(model="gpt-5", input_tokens=1, output_tokens=2, cost_usd=Decimal("12.5")), "gpt-5 · 1→2 tok · $12.50"),
])
def test_comment(fields, line):
    assert comment(rec(**fields)) == line


def test_close_call_client_gone_before_the_end_marker_is_an_error():
    flow, call = opened("/openai/v1/chat/completions", {**CHAT, "stream": True})
    call.meter = StreamMeter(stream_parser(call.route.api, strip_usage_chunk=True), SSEDecoder(), strip=True)
    data, _ = T.openai_chat_stream()
    call.meter(data[:data.index(b"[DONE]")])
    flow.response = tutils.tresp(content=b"", headers=Headers(content_type="text/event-stream"))
    flow.error = mflow.Error("client disconnected")
    record, _ = close_call(flow, call, log_bodies=True)
    assert record.error == "client disconnected" and record.input_tokens == 1204
