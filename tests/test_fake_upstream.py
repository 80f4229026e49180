"""Self-tests of the fake LLM upstream (no proxy in between).

The end-to-end tests trust the fake to look like the real providers, so here
every shape is parsed by the real SDKs, and the plumbing features (chunking,
failures, drops, TLS, replay) are checked at the byte level.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


def scenario(**fields: Any) -> dict[str, str]:
    return {"x-fake-scenario": json.dumps(fields)}


def text_of(n: int) -> str:
    return "".join(f"w{i} " for i in range(n))


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(default_delay=0).start() as server:
        yield server


@pytest.fixture
def http(up: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=5) as client:
        yield client


@pytest.fixture
def oai(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.url + "/v1", api_key="x", max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def claude(up: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=up.url, api_key="x", max_retries=0, timeout=5) as client:
        yield client


def gemini(up: FakeUpstream, **fields: Any) -> genai.Client:
    return genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=up.url, headers=scenario(**fields)))


def raw_exchange(up: FakeUpstream, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes (requests say Connection: close)."""
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as sock:
        sock.sendall(data)
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
    return b"".join(received)


def chunk_payloads(response: bytes) -> list[bytes]:
    """The HTTP chunks of a raw chunked response, in order (without the last empty one)."""
    _, _, rest = response.partition(b"\r\n\r\n")
    payloads = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return payloads
        payloads.append(rest[:size])
        rest = rest[size + 2:]


def post_raw(path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    text = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(text)}\r\n\r\n").encode() + text


# ---------------------------------------------------------------- OpenAI chat / legacy / embeddings

def test_openai_chat_json_usage(oai: openai.OpenAI, up: FakeUpstream) -> None:
    r = oai.chat.completions.create(model="gpt-x", messages=MESSAGES,  # type: ignore[arg-type]
                                    extra_headers=scenario(input=20, output=5, cached=4, cache_write=2, reasoning=3))
    assert r.choices[0].message.content == text_of(5)
    assert r.model == "gpt-x"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (20, 5, 25)
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    assert r.usage.prompt_tokens_details.model_dump()["cache_write_tokens"] == 2
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    assert up.requests[-1].json["model"] == "gpt-x"
    assert up.requests[-1].path == "/v1/chat/completions"


def test_openai_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(
        model="gpt-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
        extra_headers=scenario(input=9, output=4, cached=2)))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (9, 4, 2)


def test_openai_chat_stream_deltas_and_no_usage(http: httpx.Client) -> None:
    r = http.post("/openai/v1/chat/completions", json={"model": "m", "stream": True},
                  headers=scenario(output=10, deltas=3))
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert contents == ["w0 w1 w2 w3 ", "w4 w5 w6 ", "w7 w8 w9 "]
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["x-request-id"].startswith("fake-")


def test_openai_chat_mid_stream_error(oai: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIError, match="fake mid-stream failure"):
        for chunk in oai.chat.completions.create(model="m", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                 extra_headers=scenario(error_after=2)):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["w0 ", "w1 "]


def test_openai_legacy_completions(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model="davinci", prompt="hi", extra_headers=scenario(input=3, output=2))
    assert r.choices[0].text == text_of(2)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 2)
    chunks = list(oai.completions.create(model="davinci", prompt="hi", stream=True,
                                         stream_options={"include_usage": True}, extra_headers=scenario(output=3)))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text_of(3)
    assert chunks[-1].usage.completion_tokens == 3


def test_openai_embeddings(oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(model="emb", input=["a", "b", "c"], extra_headers=scenario(input=6))
    assert [d.index for d in r.data] == [0, 1, 2]
    assert r.data[0].embedding == pytest.approx([0.1, 0.2, 0.3])
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (6, 6)


# ---------------------------------------------------------------- OpenAI Responses

def test_responses_json(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-r", input="hi", extra_headers=scenario(input=30, output=6, cached=8, reasoning=2))
    assert r.output_text == text_of(6)
    assert r.model == "gpt-r"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (30, 6, 36)
    assert r.usage.input_tokens_details.cached_tokens == 8
    assert r.usage.output_tokens_details.reasoning_tokens == 2


def test_responses_stream_events(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-r", input="hi", stream=True, extra_headers=scenario(output=3)))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.usage is None
    assert events[-1].response.usage.output_tokens == 3
    assert events[-1].response.output_text == text_of(3)


def test_responses_stream_helper(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-r", input="hi", extra_headers=scenario(output=4, input=5)) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == text_of(4)
    assert final.usage.input_tokens == 5


def test_responses_mid_stream_error(oai: openai.OpenAI) -> None:
    # The SDK surfaces a Responses "error" event as an event, not an exception.
    events = list(oai.responses.create(model="m", input="hi", stream=True, extra_headers=scenario(error_after=1)))
    assert [e.type for e in events[-2:]] == ["response.output_text.delta", "error"]
    error = events[-1]
    assert error.message == "fake mid-stream failure" and error.code == "server_error"  # type: ignore[union-attr]
    assert error.sequence_number == 5


# ---------------------------------------------------------------- Anthropic

def test_anthropic_json_usage_excludes_cache(claude: anthropic.Anthropic) -> None:
    m = claude.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES,  # type: ignore[arg-type]
                               extra_headers=scenario(input=100, output=5, cached=30, cache_write=20, cache_write_1h=5))
    assert m.content[0].text == text_of(5)  # type: ignore[union-attr]
    assert m.model == "claude-x" and m.stop_reason == "end_turn"
    u = m.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (50, 30, 20, 5)
    assert u.cache_creation is not None
    assert (u.cache_creation.ephemeral_5m_input_tokens, u.cache_creation.ephemeral_1h_input_tokens) == (15, 5)


def test_anthropic_stream_raw_events(claude: anthropic.Anthropic) -> None:
    events = list(claude.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES,  # type: ignore[arg-type]
                                         stream=True, extra_headers=scenario(input=12, output=3, cached=2)))
    types = [e.type for e in events]  # the SDK swallows ping
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens == 10  # type: ignore[union-attr]
    assert events[0].message.usage.cache_read_input_tokens == 2  # type: ignore[union-attr]
    assert events[-2].usage.output_tokens == 3  # type: ignore[union-attr]


def test_anthropic_stream_helper(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="claude-x", max_tokens=10, messages=MESSAGES,  # type: ignore[arg-type]
                                extra_headers=scenario(output=6)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(6)
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == 11


def test_anthropic_count_tokens_and_mid_stream_error(claude: anthropic.Anthropic) -> None:
    count = claude.messages.count_tokens(model="claude-x", messages=MESSAGES,  # type: ignore[arg-type]
                                         extra_headers=scenario(input=42))
    assert count.input_tokens == 42
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        list(claude.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES,  # type: ignore[arg-type]
                                    stream=True, extra_headers=scenario(error_after=2)))


# ---------------------------------------------------------------- Gemini

def test_gemini_json(up: FakeUpstream) -> None:
    client = gemini(up, input=20, output=9, reasoning=4, cached=5)  # keep a reference: del closes it
    r = client.models.generate_content(model="gemini-x", contents="hi")
    assert r.text == text_of(9)
    u = r.usage_metadata
    assert u is not None
    assert (u.prompt_token_count, u.candidates_token_count, u.thoughts_token_count) == (20, 5, 4)
    assert (u.cached_content_token_count, u.total_token_count) == (5, 29)
    assert r.model_version == "gemini-x"
    assert up.requests[-1].path.endswith("/models/gemini-x:generateContent")


def test_gemini_stream_cumulative_usage(up: FakeUpstream) -> None:
    client = gemini(up, input=7, output=4)
    chunks = list(client.models.generate_content_stream(model="gemini-x", contents="hi"))
    assert len(chunks) == 4
    assert "".join(c.text or "" for c in chunks) == text_of(4)
    counts = [c.usage_metadata.candidates_token_count for c in chunks]  # type: ignore[union-attr]
    assert counts == [1, 2, 3, 4]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata.thoughts_token_count is None  # type: ignore[union-attr]
    assert up.requests[-1].query == {"alt": "sse"}


def test_gemini_sse_framing_and_json_array(http: httpx.Client) -> None:
    path = "/v1beta/models/g:streamGenerateContent"
    sse = http.post(path, params={"alt": "sse"}, json={}, headers=scenario(output=2)).content
    assert sse.startswith(b"data: {") and sse.endswith(b"}\r\n\r\n") and sse.count(b"\r\n\r\n") == 2
    array = http.post(path, json={}, headers=scenario(output=3, reasoning=1))
    assert array.headers["content-type"] == "application/json"
    chunks = json.loads(array.content)
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks] == [0, 1, 2]
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 1
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 11 + 3
    broken = json.loads(http.post(path, json={}, headers=scenario(error_after=1)).content)
    assert broken[-1]["error"]["status"] == "INTERNAL"


def test_gemini_errors(up: FakeUpstream) -> None:
    streaming, limited = gemini(up, error_after=2), gemini(up, status=429)
    received = []
    with pytest.raises(genai_errors.ServerError, match="fake mid-stream failure"):
        for chunk in streaming.models.generate_content_stream(model="g", contents="hi"):
            received.append(chunk.text)
    assert received == ["w0 ", "w1 "]
    with pytest.raises(genai_errors.ClientError) as caught:
        limited.models.generate_content(model="g", contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"


# ---------------------------------------------------------------- Ollama

def test_ollama_chat_generate_embed(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"model": "llama", "messages": MESSAGES}, headers=scenario(input=4, output=3))
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["message"]["content"] for x in lines] == ["w0 ", "w1 ", "w2 ", ""]
    assert lines[-1]["done"] and (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (4, 3)
    single = http.post("/api/generate", json={"model": "llama", "prompt": "x", "stream": False}).json()
    assert single["response"] == text_of(7) and single["done"] and single["eval_count"] == 7
    embed = http.post("/api/embed", json={"model": "e", "input": ["a", "b"]}, headers=scenario(input=2)).json()
    assert len(embed["embeddings"]) == 2 and embed["prompt_eval_count"] == 2
    broken = http.post("/api/chat", json={"model": "llama"}, headers=scenario(error_after=1)).text.splitlines()
    assert json.loads(broken[-1]) == {"error": "fake mid-stream failure"}


# ---------------------------------------------------------------- plumbing

STREAMS = [
    ("/v1/chat/completions", {"model": "m", "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/responses", {"model": "m", "stream": True}),
    ("/v1/messages", {"model": "m", "stream": True}),
    ("/v1beta/models/g:streamGenerateContent?alt=sse", {}),
    ("/api/chat", {"model": "m"}),
]


@pytest.mark.parametrize(("path", "body"), STREAMS)
def test_chunk_size_splits_identical_bytes(up: FakeUpstream, path: str, body: dict[str, Any]) -> None:
    normal = chunk_payloads(raw_exchange(up, post_raw(path, body)))
    sliced = chunk_payloads(raw_exchange(up, post_raw(path, body, scenario(chunk_size=7))))
    assert b"".join(normal) == b"".join(sliced)
    assert all(len(p) == 7 for p in sliced[:-1]) and len(sliced) > len(normal)
    assert b"w6 " in normal[-1] or len(normal) >= 7  # each event is its own chunk


def test_each_event_is_one_chunk(up: FakeUpstream) -> None:
    payloads = chunk_payloads(raw_exchange(up, post_raw("/v1/messages", {"stream": True}, scenario(output=2))))
    names = [p.split(b"\n")[0] for p in payloads]
    assert names == [b"event: message_start", b"event: content_block_start", b"event: ping",
                     b"event: content_block_delta", b"event: content_block_delta", b"event: content_block_stop",
                     b"event: message_delta", b"event: message_stop"]


def test_fail_first(http: httpx.Client, up: FakeUpstream) -> None:
    headers = scenario(fail_first=2, id="ff-httpx")
    statuses = [http.post("/v1/chat/completions", json={"model": "m"}, headers=headers).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    other = http.post("/v1/messages", json={}, headers=scenario(fail_first=1, id="ff-other", fail_status=529))
    assert other.status_code == 529 and other.json()["error"]["type"] == "overloaded_error"


def test_fail_first_with_sdk_retries(up: FakeUpstream) -> None:
    up.clear()
    with openai.OpenAI(base_url=up.url + "/v1", api_key="x", max_retries=2) as client:
        r = client.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                           extra_headers=scenario(fail_first=2, id="ff-sdk", retry_after=0.01))
    assert r.choices[0].message.content == text_of(7)
    assert len(up.requests) == 3


@pytest.mark.parametrize(("status", "error"), [
    (429, openai.RateLimitError), (401, openai.AuthenticationError), (400, openai.BadRequestError),
    (500, openai.InternalServerError),
])
def test_openai_status_errors(oai: openai.OpenAI, status: int, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        oai.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                    extra_headers=scenario(status=status, retry_after=2))
    assert caught.value.response.headers["retry-after"] == "2"  # type: ignore[attr-defined]
    if status == 429:
        assert caught.value.code == "rate_limit_exceeded"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("status", "error"), [
    (500, anthropic.InternalServerError), (529, anthropic.OverloadedError), (429, anthropic.RateLimitError),
    (404, anthropic.NotFoundError),
])
def test_anthropic_status_errors(claude: anthropic.Anthropic, status: int, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        claude.messages.create(model="m", max_tokens=5, messages=MESSAGES,  # type: ignore[arg-type]
                               extra_headers=scenario(status=status))
    assert caught.value.body["type"] == "error"  # type: ignore[attr-defined]


def test_drop_after_stream(http: httpx.Client, oai: openai.OpenAI) -> None:
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/api/chat", json={"model": "m"}, headers=scenario(drop_after=2)) as r:
            for line in r.iter_lines():
                received.append(json.loads(line)["message"]["content"])
    assert received == ["w0 ", "w1 "]
    contents = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(model="m", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                 extra_headers=scenario(drop_after=3)):
            if chunk.choices and chunk.choices[0].delta.content:
                contents.append(chunk.choices[0].delta.content)
    assert contents == ["w0 ", "w1 ", "w2 "]


def test_drop_after_non_stream(http: httpx.Client, oai: openai.OpenAI) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json={"model": "m"}, headers=scenario(drop_after=0))
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                    extra_headers=scenario(drop_after=0))
    assert http.post("/v1/chat/completions", json={"model": "m"}).status_code == 200


def test_tls() -> None:
    with FakeUpstream(tls=True, default_delay=0).start() as secure:
        assert secure.url.startswith("https://localhost:") and secure.ca_pem_path
        # Same as verify=ca_pem_path, which httpx 0.28 deprecates in favour of a context.
        with httpx.Client(verify=ssl.create_default_context(cafile=secure.ca_pem_path)) as client:
            r = client.post(secure.url + "/v1/chat/completions", json={"model": "m", "stream": True})
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
            ip_url = secure.url.replace("localhost", "127.0.0.1") + "/v1/messages"
            assert client.post(ip_url, json={}).json()["type"] == "message"
        with pytest.raises(httpx.ConnectError):
            httpx.get(secure.url + "/v1/models")  # system trust store does not know the cert
        ca = secure.ca_pem_path
    assert not Path(ca).exists()  # the throwaway cert is cleaned up on stop


def test_replay_is_verbatim(http: httpx.Client, tmp_path: Path) -> None:
    recorded = bytes(range(256)) * 3 + b"data: {\"x\": 1}\n\n"
    path = tmp_path / "body.bin"
    path.write_bytes(recorded)
    r = http.post("/v1/chat/completions", json={"model": "m"},
                  headers=scenario(replay=str(path), content_type="text/event-stream", chunk_size=50))
    assert r.status_code == 200 and r.content == recorded
    assert r.headers["content-type"] == "text/event-stream"
    assert "content-encoding" not in r.headers


def test_bad_scenario_unknown_path_and_query_scenario(http: httpx.Client, up: FakeUpstream) -> None:
    bad = http.post("/v1/messages", json={}, headers={"x-fake-scenario": "{nope"})
    assert bad.status_code == 400 and "x-fake-scenario is not valid JSON" in bad.json()["error"]["message"]
    wrong_type = http.post("/v1/chat/completions", json={}, headers=scenario(output="many"))
    assert wrong_type.status_code == 400 and "'output'" in wrong_type.json()["error"]["message"]
    missing = http.get("/v1/models")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    via_query = http.post("/v1/chat/completions", params={"fake_scenario": json.dumps({"output": 2}), "a": "1"},
                          json={"model": "m"})
    assert via_query.json()["choices"][0]["message"]["content"] == text_of(2)
    assert up.requests[-1].query["a"] == "1" and up.requests[-1].path == "/v1/chat/completions"


def test_malformed_http_and_chunked_request_body(up: FakeUpstream) -> None:
    assert raw_exchange(up, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    body = b'{"model": "chunked-model"}'
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    response = raw_exchange(up, request)
    assert response.startswith(b"HTTP/1.1 200 OK") and b'"model":"chunked-model"' in response
    assert up.requests[-1].body == body and up.requests[-1].json == {"model": "chunked-model"}


def test_keep_alive_serves_several_requests_per_connection(up: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert json.loads(reader.read(int(headers["content-length"])))["object"] == "list"


def test_client_disconnect_mid_stream_is_harmless(up: FakeUpstream, http: httpx.Client) -> None:
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as sock:
        sock.sendall(post_raw("/v1/messages", {"stream": True}, scenario(output=50, delay=0.01)))
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    time.sleep(0.05)
    assert http.post("/v1/messages", json={}).status_code == 200


def test_delays(http: httpx.Client) -> None:
    started = time.monotonic()
    with http.stream("POST", "/v1/chat/completions", json={"stream": True},
                     headers=scenario(first_delay=0.1, delay=0.03, output=3)) as r:
        headers_at = time.monotonic() - started
        arrivals = [time.monotonic() - started for _ in r.iter_raw()]
    assert headers_at >= 0.1
    assert arrivals[-1] - headers_at >= 0.03 * 4 * 0.9  # role + 3 deltas + finish + [DONE]: >= 4 pauses


def test_clear_and_concurrent_requests(up: FakeUpstream) -> None:
    up.clear()
    statuses: list[int] = []
    with httpx.Client(base_url=up.url, timeout=5) as client:  # httpx clients are thread-safe

        def hit() -> None:
            r = client.post("/api/chat", json={"model": "m"}, headers=scenario(delay=0.01, output=3))
            statuses.append(r.status_code)

        threads = [threading.Thread(target=hit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 8 and len(up.requests) == 8
    up.clear()
    assert up.requests == []
