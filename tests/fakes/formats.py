"""Wire formats of the fake LLM upstream: what each provider's bytes look like.

Everything here is pure (no sockets, no clock) so that the HTTP plumbing in
``upstream.py`` stays format-agnostic and tests can reason about exact bytes.
A builder returns either a :class:`JsonReply` (one JSON document) or a
:class:`StreamReply` (pre-encoded events split into head / content deltas /
tail), which lets the server inject mid-stream errors and connection drops
"after N content deltas" without knowing any provider's format.

Timestamps and ids are constants on purpose: two runs of the same scenario
produce identical bytes, which the chunk-splitting and replay tests rely on.
"""

from __future__ import annotations

import dataclasses

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

CREATED = 1767225600  # 2026-01-01T00:00:00Z, fixed for reproducible bytes
OLLAMA_CREATED_AT = "2026-01-01T00:00:00Z"
DEFAULT_MODEL = "fake-model"
MID_STREAM_MESSAGE = "fake mid-stream failure"
FAKE_EMBEDDING = [0.1, 0.2, 0.3]
OLLAMA_EMBEDDING = [0.1, 0.2]


class ScenarioError(ValueError):
    """An unusable ``x-fake-scenario``; the server turns it into a 400 reply."""


# Field name -> converter. Kept explicit (rather than read from annotations)
# so the parsing rules are visible in one place.
_CONVERTERS: dict[str, type] = {
    "input": int, "output": int, "cached": int, "cache_write": int,
    "cache_write_1h": int, "reasoning": int, "deltas": int, "delay": float,
    "first_delay": float, "chunk_size": int, "status": int, "retry_after": float,
    "fail_first": int, "id": str, "fail_status": int, "error_after": int,
    "drop_after": int, "replay": str, "content_type": str, "model": str, "only_model": str,
}


@dataclass(frozen=True)
class Scenario:
    """Per-request instructions sent by a test in the ``x-fake-scenario`` header.

    ``input`` is the TOTAL prompt size including cached / cache-written tokens;
    each builder converts it to its provider's convention (Anthropic excludes
    cache tokens from ``input_tokens``, Gemini counts thoughts as output).

    Server-side semantics (see ``upstream.py``): ``status`` >= 400 answers with
    the provider's error body, a lower ``status`` only changes the code of a
    JSON answer; with ``error_after`` / ``drop_after`` the normal stream tail is
    never sent, even when the cut is past the last delta; ``fail_first``
    counts per ``id`` (requests without an id share the id "").
    """

    input: int = 11
    output: int = 7
    cached: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    deltas: int | None = None
    delay: float | None = None
    first_delay: float = 0.0
    chunk_size: int | None = None
    status: int | None = None
    retry_after: float | None = None
    fail_first: int = 0
    id: str = ""
    fail_status: int = 503
    error_after: int | None = None
    drop_after: int | None = None
    replay: str | None = None
    content_type: str | None = None
    model: str | None = None
    # When set, the failure fields (first_delay, status, fail_first, error_after,
    # drop_after) apply only to requests for this model: a primary can fail while
    # its fallback, sent the same scenario by the proxy, succeeds.
    only_model: str | None = None

    def for_model(self, model: str | None) -> Scenario:
        """The scenario as it applies to a request for `model`."""
        if self.only_model is None or model == self.only_model:
            return self
        return dataclasses.replace(self, first_delay=0.0, status=None, fail_first=0, error_after=None,
                                   drop_after=None)

    @classmethod
    def parse(cls, text: str | None) -> Scenario:
        """Parse the header value; unknown keys are ignored, bad values raise."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"x-fake-scenario is not valid JSON ({exc}): {text!r}") from None
        if not isinstance(raw, dict):
            raise ScenarioError(f"x-fake-scenario must be a JSON object, got: {text!r}")
        values = {f.name: _convert(f.name, raw[f.name]) for f in fields(cls)
                  if raw.get(f.name) is not None}
        if values.get("deltas") == 0 or values.get("chunk_size") == 0:
            raise ScenarioError("x-fake-scenario: 'deltas' and 'chunk_size' must be >= 1")
        return cls(**values)


def _convert(name: str, value: Any) -> Any:
    convert = _CONVERTERS[name]
    if convert is str:
        return str(value)
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise ScenarioError(f"x-fake-scenario: {name!r} must be a number, got {value!r}")
    try:
        number = convert(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"x-fake-scenario: {name!r} must be a number, got {value!r}") from None
    if number < 0:
        raise ScenarioError(f"x-fake-scenario: {name!r} must be >= 0, got {value!r}")
    return number


def pieces(s: Scenario) -> list[str]:
    """One text piece per output token, so tests can count what arrived."""
    return [f"w{i} " for i in range(s.output)]


def delta_texts(s: Scenario) -> list[str]:
    """The texts of the streamed content deltas (one piece each unless ``deltas``)."""
    all_pieces = pieces(s)
    if s.deltas is None:
        return all_pieces
    size, extra = divmod(len(all_pieces), s.deltas)
    out, start = [], 0
    for i in range(s.deltas):
        end = start + size + (1 if i < extra else 0)
        out.append("".join(all_pieces[start:end]))
        start = end
    return out


class Api(Enum):
    """The request shapes the fake understands; the value's prefix is the
    provider family, which picks the error format."""

    OPENAI_CHAT = "openai.chat"
    OPENAI_COMPLETIONS = "openai.completions"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"
    GEMINI_GENERATE = "gemini.generate"
    GEMINI_STREAM = "gemini.stream"
    OLLAMA_CHAT = "ollama.chat"
    OLLAMA_GENERATE = "ollama.generate"
    OLLAMA_EMBED = "ollama.embed"
    UNKNOWN = "openai.unknown"  # unknown paths answer 404 in OpenAI's shape

    @property
    def family(self) -> str:
        return self.value.split(".")[0]


# Longest / most specific suffix first: "/chat/completions" before "/completions".
_SUFFIXES: list[tuple[str, Api]] = [
    ("/messages/count_tokens", Api.ANTHROPIC_COUNT_TOKENS),
    ("/chat/completions", Api.OPENAI_CHAT),
    ("/completions", Api.OPENAI_COMPLETIONS),
    ("/embeddings", Api.OPENAI_EMBEDDINGS),
    ("/responses", Api.OPENAI_RESPONSES),
    ("/messages", Api.ANTHROPIC_MESSAGES),
    ("/api/chat", Api.OLLAMA_CHAT),
    ("/api/generate", Api.OLLAMA_GENERATE),
    ("/api/embed", Api.OLLAMA_EMBED),
]
_GEMINI_PATH = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)$")


def route(path: str) -> tuple[Api, str | None]:
    """Map a request path (any prefix allowed) to an Api and, for Gemini, the model."""
    path = path.rstrip("/")
    if match := _GEMINI_PATH.search(path):
        api = Api.GEMINI_STREAM if match.group(2) == "streamGenerateContent" else Api.GEMINI_GENERATE
        return api, match.group(1)
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api, None
    return Api.UNKNOWN, None


@dataclass(frozen=True)
class Call:
    """Everything a builder needs to know about one request."""

    api: Api
    path: str
    model: str
    stream: bool
    body: dict[str, Any]
    scenario: Scenario
    sse: bool = False  # Gemini: alt=sse


@dataclass
class JsonReply:
    body: Any
    status: int = 200
    content_type: str = "application/json"


@dataclass
class StreamReply:
    """A streamed body as events; ``error(n)`` is the mid-stream error event
    to send after ``n`` content deltas (some formats number their events)."""

    content_type: str
    head: list[bytes]
    deltas: list[bytes]
    tail: list[bytes]
    error: Callable[[int], bytes]


Reply = JsonReply | StreamReply


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n".encode() if event else b""
    payload = data if isinstance(data, bytes) else dumps(data)
    return prefix + b"data: " + payload + b"\n\n"


def make_call(api: Api, path: str, body: Any, query: dict[str, str],
              scenario: Scenario, gemini_model: str | None) -> Call:
    """Derive model and stream flag the way each provider does."""
    body = body if isinstance(body, dict) else {}
    requested = gemini_model or body.get("model")
    model = scenario.model or (requested if isinstance(requested, str) else DEFAULT_MODEL)
    if api in (Api.OLLAMA_CHAT, Api.OLLAMA_GENERATE):
        stream = body.get("stream", True) is not False
    elif api is Api.GEMINI_STREAM:
        stream = True
    elif api in (Api.OPENAI_CHAT, Api.OPENAI_COMPLETIONS, Api.OPENAI_RESPONSES, Api.ANTHROPIC_MESSAGES):
        stream = body.get("stream") is True
    else:
        stream = False
    return Call(api, path, model, stream, body, scenario, sse=query.get("alt") == "sse")


def build(call: Call) -> Reply:
    """Dispatch to the builder for the call's API shape."""
    return _BUILDERS[call.api](call)


# ---------------------------------------------------------------- errors

def error_body(family: str, status: int, message: str) -> Any:
    """The provider's own JSON error document for an HTTP error status."""
    if family == "anthropic":
        return {"type": "error", "error": {"type": _anthropic_error_type(status), "message": message},
                "request_id": "req_fake"}
    if family == "gemini":
        return {"error": {"code": status, "message": message, "status": _gemini_status(status)}}
    if family == "ollama":
        return {"error": message}
    kind, code = _openai_error_kind(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _openai_error_kind(status: int) -> tuple[str, str | None]:
    known = {401: ("authentication_error", "invalid_api_key"), 403: ("permission_error", None),
             404: ("not_found_error", None), 429: ("requests", "rate_limit_exceeded")}
    if status in known:
        return known[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


def _anthropic_error_type(status: int) -> str:
    known = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
             500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
    return known.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _gemini_status(status: int) -> str:
    known = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
    return known.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


# ---------------------------------------------------------------- OpenAI

_OPENAI_STREAM_ERROR = sse({"error": {"message": MID_STREAM_MESSAGE, "type": "server_error",
                                      "param": None, "code": None}})


def _openai_usage(s: Scenario, details: bool = True) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": s.input, "completion_tokens": s.output,
                             "total_tokens": s.input + s.output}
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": s.cached, "cache_write_tokens": s.cache_write}
        usage["completion_tokens_details"] = {"reasoning_tokens": s.reasoning}
    return usage


def _openai_sse_stream(call: Call, obj: str, ident: str, choice: Callable[[str | None, bool], dict[str, Any]],
                       details: bool) -> StreamReply:
    """Shared chat/legacy stream: ``choice(text, final)`` shapes one choice."""
    stream_options = call.body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        data: dict[str, Any] = {"id": ident, "object": obj, "created": CREATED, "model": call.model,
                                "choices": choices}
        if include_usage:
            data["usage"] = usage
        return sse(data)

    head = [chunk([choice(None, False)])] if obj == "chat.completion.chunk" else []
    deltas = [chunk([choice(text, False)]) for text in delta_texts(call.scenario)]
    tail = [chunk([choice(None, True)])]
    if include_usage:
        tail.append(chunk([], _openai_usage(call.scenario, details)))
    tail.append(b"data: [DONE]\n\n")
    return StreamReply("text/event-stream", head, deltas, tail, lambda _n: _OPENAI_STREAM_ERROR)


def openai_chat(call: Call) -> Reply:
    s = call.scenario
    if call.stream:
        def choice(text: str | None, final: bool) -> dict[str, Any]:
            if final:
                delta: dict[str, Any] = {}
            elif text is None:
                delta = {"role": "assistant", "content": ""}
            else:
                delta = {"content": text}
            return {"index": 0, "delta": delta, "finish_reason": "stop" if final else None}
        return _openai_sse_stream(call, "chat.completion.chunk", "chatcmpl-fake", choice, True)
    return JsonReply({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": call.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces(s))},
                     "finish_reason": "stop"}],
        "usage": _openai_usage(s),
    })


def openai_completions(call: Call) -> Reply:
    s = call.scenario
    if call.stream:
        def choice(text: str | None, final: bool) -> dict[str, Any]:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": "stop" if final else None}
        return _openai_sse_stream(call, "text_completion", "cmpl-fake", choice, False)
    return JsonReply({
        "id": "cmpl-fake", "object": "text_completion", "created": CREATED, "model": call.model,
        "choices": [{"index": 0, "text": "".join(pieces(s)), "logprobs": None, "finish_reason": "stop"}],
        "usage": _openai_usage(s, details=False),
    })


def _input_count(value: Any) -> int:
    """How many embeddings an ``input`` asks for (a token array counts as one)."""
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        return len(value)
    return 1


def openai_embeddings(call: Call) -> Reply:
    count = _input_count(call.body.get("input"))
    data = [{"object": "embedding", "index": i, "embedding": list(FAKE_EMBEDDING)} for i in range(count)]
    return JsonReply({"object": "list", "data": data, "model": call.model,
                      "usage": {"prompt_tokens": call.scenario.input, "total_tokens": call.scenario.input}})


# ---------------------------------------------------------------- OpenAI Responses

def _response(call: Call, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    return {"id": "resp_fake", "object": "response", "created_at": CREATED, "status": status,
            "model": call.model, "output": output, "usage": usage, "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {},
            "parallel_tool_calls": True, "temperature": 1.0, "top_p": 1.0,
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}}}


def _responses_usage(s: Scenario) -> dict[str, Any]:
    return {"input_tokens": s.input, "input_tokens_details": {"cached_tokens": s.cached},
            "output_tokens": s.output, "output_tokens_details": {"reasoning_tokens": s.reasoning},
            "total_tokens": s.input + s.output}


def _responses_message(text: str | None) -> dict[str, Any]:
    """The assistant message item; ``None`` text means still in progress (no parts)."""
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": "msg_fake", "status": "in_progress" if text is None else "completed",
            "role": "assistant", "content": content}


def openai_responses(call: Call) -> Reply:
    s = call.scenario
    text = "".join(pieces(s))
    final = _response(call, "completed", [_responses_message(text)], _responses_usage(s))
    if not call.stream:
        return JsonReply(final)
    started = _response(call, "in_progress", [], None)
    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": []}
    head_events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": _responses_message(None)}),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
    ]
    delta_events = [("response.output_text.delta", {**where, "delta": d, "logprobs": []})
                    for d in delta_texts(s)]
    tail_events = [
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": {**part, "text": text}}),
        ("response.output_item.done", {"output_index": 0, "item": _responses_message(text)}),
        ("response.completed", {"response": final}),
    ]
    numbered = [sse({"type": name, **data, "sequence_number": i}, event=name)
                for i, (name, data) in enumerate(head_events + delta_events + tail_events)]
    n_head, n_deltas = len(head_events), len(delta_events)

    def error(sent_deltas: int) -> bytes:
        return sse({"type": "error", "code": "server_error", "message": MID_STREAM_MESSAGE,
                    "param": None, "sequence_number": n_head + sent_deltas}, event="error")

    return StreamReply("text/event-stream", numbered[:n_head], numbered[n_head:n_head + n_deltas],
                       numbered[n_head + n_deltas:], error)


# ---------------------------------------------------------------- Anthropic

_ANTHROPIC_STREAM_ERROR = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                              event="error")


def _anthropic_usage(s: Scenario, output: int) -> dict[str, Any]:
    """Anthropic's input_tokens excludes cache reads and writes."""
    write_1h = min(s.cache_write_1h, s.cache_write)
    return {"input_tokens": max(s.input - s.cached - s.cache_write, 0),
            "cache_creation_input_tokens": s.cache_write, "cache_read_input_tokens": s.cached,
            "cache_creation": {"ephemeral_5m_input_tokens": s.cache_write - write_1h,
                               "ephemeral_1h_input_tokens": write_1h},
            "output_tokens": output}


def _anthropic_message(call: Call, content: list[Any], stop_reason: str | None, output: int) -> dict[str, Any]:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": call.model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": _anthropic_usage(call.scenario, output)}


def anthropic_messages(call: Call) -> Reply:
    s = call.scenario
    if not call.stream:
        content = [{"type": "text", "text": "".join(pieces(s))}]
        return JsonReply(_anthropic_message(call, content, "end_turn", s.output))

    def event(name: str, data: dict[str, Any]) -> bytes:
        return sse({"type": name, **data}, event=name)

    head = [
        event("message_start", {"message": _anthropic_message(call, [], None, 1)}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    deltas = [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": d}})
              for d in delta_texts(s)]
    tail = [
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": s.output}}),
        event("message_stop", {}),
    ]
    return StreamReply("text/event-stream; charset=utf-8", head, deltas, tail, lambda _n: _ANTHROPIC_STREAM_ERROR)


def anthropic_count_tokens(call: Call) -> Reply:
    return JsonReply({"input_tokens": call.scenario.input})


# ---------------------------------------------------------------- Gemini

_GEMINI_ERROR = {"error": {"code": 500, "message": MID_STREAM_MESSAGE, "status": "INTERNAL"}}


def _gemini_usage(s: Scenario, candidates: int) -> dict[str, Any]:
    """Cumulative usage; Gemini bills thoughts as output, outside candidates."""
    usage = {"promptTokenCount": s.input, "candidatesTokenCount": candidates,
             "totalTokenCount": s.input + candidates + s.reasoning}
    if s.reasoning:
        usage["thoughtsTokenCount"] = s.reasoning
    if s.cached:
        usage["cachedContentTokenCount"] = s.cached
    return usage


def _gemini_chunk(call: Call, text: str, candidates: int, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if final:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": _gemini_usage(call.scenario, candidates),
            "modelVersion": call.model, "responseId": "fake"}


def gemini(call: Call) -> Reply:
    s = call.scenario
    total_candidates = max(s.output - s.reasoning, 0)
    if not call.stream:
        return JsonReply(_gemini_chunk(call, "".join(pieces(s)), total_candidates, True))
    texts = delta_texts(s) or [""]  # the last chunk carries finishReason, so always send one
    chunks = [_gemini_chunk(call, text, total_candidates * (i + 1) // len(texts), i == len(texts) - 1)
              for i, text in enumerate(texts)]
    if call.sse:
        return StreamReply("text/event-stream", [], [b"data: " + dumps(c) + b"\r\n\r\n" for c in chunks], [],
                           lambda _n: b"data: " + dumps(_GEMINI_ERROR) + b"\r\n\r\n")
    # Without alt=sse Gemini streams one JSON array, element by element.
    elements = [(b"[" if i == 0 else b",") + dumps(c) + b"\n" for i, c in enumerate(chunks)]
    return StreamReply("application/json", [], elements, [b"]"],
                       lambda n: (b"," if n else b"[") + dumps(_GEMINI_ERROR) + b"\n]")


# ---------------------------------------------------------------- Ollama

_OLLAMA_STREAM_ERROR = dumps({"error": MID_STREAM_MESSAGE}) + b"\n"


def _ollama_line(call: Call, text: str, done: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"model": call.model, "created_at": OLLAMA_CREATED_AT}
    if call.api is Api.OLLAMA_CHAT:
        data["message"] = {"role": "assistant", "content": text}
    else:
        data["response"] = text
    data["done"] = done
    if done:
        s = call.scenario
        data.update({"done_reason": "stop", "total_duration": 123, "load_duration": 1,
                     "prompt_eval_count": s.input, "prompt_eval_duration": 2,
                     "eval_count": s.output, "eval_duration": 3})
    return data


def ollama(call: Call) -> Reply:
    s = call.scenario
    if not call.stream:
        return JsonReply(_ollama_line(call, "".join(pieces(s)), True))
    deltas = [dumps(_ollama_line(call, d, False)) + b"\n" for d in delta_texts(s)]
    tail = [dumps(_ollama_line(call, "", True)) + b"\n"]
    return StreamReply("application/x-ndjson", [], deltas, tail, lambda _n: _OLLAMA_STREAM_ERROR)


def ollama_embed(call: Call) -> Reply:
    count = _input_count(call.body.get("input"))
    return JsonReply({"model": call.model, "embeddings": [list(OLLAMA_EMBEDDING) for _ in range(count)],
                      "prompt_eval_count": call.scenario.input})


def unknown(call: Call) -> Reply:
    return JsonReply(error_body("openai", 404, f"fake upstream has no route for {call.path}"), status=404)


_BUILDERS: dict[Api, Callable[[Call], Reply]] = {
    Api.OPENAI_CHAT: openai_chat,
    Api.OPENAI_COMPLETIONS: openai_completions,
    Api.OPENAI_EMBEDDINGS: openai_embeddings,
    Api.OPENAI_RESPONSES: openai_responses,
    Api.ANTHROPIC_MESSAGES: anthropic_messages,
    Api.ANTHROPIC_COUNT_TOKENS: anthropic_count_tokens,
    Api.GEMINI_GENERATE: gemini,
    Api.GEMINI_STREAM: gemini,
    Api.OLLAMA_CHAT: ollama,
    Api.OLLAMA_GENERATE: ollama,
    Api.OLLAMA_EMBED: ollama_embed,
    Api.UNKNOWN: unknown,
}
