"""The unit tests' own provider transcripts, built the way each provider frames them.

Every builder returns the exact bytes a provider puts on the wire, modelled on
the quirks listed in shared/PROVIDER_USAGE.md ("Quirks seen in real recorded
streams"): OpenAI's `"usage":null` and `obfuscation` on every chunk and a dated
snapshot as the response model, Anthropic's padded JSON (`{...}   }`) and
`{"type": "ping"}`, Gemini's `\r\n\r\n` separators and cumulative
`usageMetadata` with zero counts omitted, Ollama's NDJSON with counts only on
the `done: true` line. Ids and timestamps are constants, so bytes are stable.

Builders that contain one event the proxy may remove (the usage-only chunk of
an injected `include_usage`) also return that event's raw bytes.
"""

from __future__ import annotations

import json
from typing import Any

from llm_proxy.usage import StreamParser


def feed(parser: StreamParser, decoder: Any, data: bytes, size: int | None = None) -> StreamParser:
    """Run `data` through a decoder in pieces of `size` bytes and the parser, then finish it."""
    size = max(1, size or len(data))
    events = []
    for i in range(0, len(data), size):
        events += decoder.feed(data[i:i + size])
    for event in events + decoder.flush():
        if event.data:
            parser.on_event(event.name, event.data)
    parser.finish()
    return parser

CREATED = 1767225600
CHAT_ID = "chatcmpl-CqT7aX2mJ0fVb9LkPz4nR8sYwE1"
SNAPSHOT = "gpt-4o-mini-2024-07-18"
FINGERPRINT = "fp_560af6e559"


def compact(obj: Any) -> str:
    """JSON the way OpenAI and Anthropic send it: no spaces, non-ASCII unescaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_event(data: str, *, event: str | None = None, eol: str = "\n") -> bytes:
    lines = ([f"event: {event}"] if event else []) + [f"data: {data}"]
    return (eol.join(lines) + eol + eol).encode()


# --- OpenAI chat/completions -------------------------------------------------------------

USAGE_WITH_DETAILS = {
    "prompt_tokens": 1204,
    "completion_tokens": 312,
    "total_tokens": 1516,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 64,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
# 2024-era usage object: no details at all (cached/cache-write/reasoning unknown).
USAGE_NO_DETAILS = {"prompt_tokens": 149, "completion_tokens": 60, "total_tokens": 209}


def _chat_chunk(choices: list[Any], *, usage: Any = None, obfuscation: str = "x") -> dict[str, Any]:
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": SNAPSHOT,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": usage,
        "obfuscation": obfuscation,
    }


def _delta(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


def openai_chat_stream(usage: dict[str, Any] | None = USAGE_WITH_DETAILS) -> tuple[bytes, bytes]:
    """A chat stream with `"usage":null` chunks, `obfuscation` padding and non-ASCII text.

    Returns (whole stream, raw bytes of the usage-only chunk or b"").
    """
    head = [
        _chat_chunk(_delta({"role": "assistant", "content": "", "refusal": None}), obfuscation="Qm"),
        _chat_chunk(_delta({"content": "Bonjour"}), obfuscation="z3fK"),
        _chat_chunk(_delta({"content": " — ça va? 日本"}), obfuscation="p"),
        _chat_chunk(_delta({}, "stop"), obfuscation="Lw9"),
    ]
    out = b"".join(sse_event(compact(c)) for c in head)
    usage_raw = b""
    if usage is not None:
        usage_raw = sse_event(compact(_chat_chunk([], usage=usage, obfuscation="Yb")))
    return out + usage_raw + sse_event("[DONE]"), usage_raw


def openai_tool_call_stream() -> bytes:
    """Two parallel tool calls whose arguments arrive in pieces (no usage requested)."""
    def call_delta(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    chunks = [
        _delta({"role": "assistant", "content": None}),
        _delta({"tool_calls": [call_delta(0, id="call_wX1", type="function",
                                          function={"name": "get_weather", "arguments": ""})]}),
        _delta({"tool_calls": [call_delta(0, function={"arguments": "{\"ci"})]}),
        _delta({"tool_calls": [call_delta(0, function={"arguments": "ty\": \"Paris\"}"})]}),
        _delta({"tool_calls": [call_delta(1, id="call_wX2", type="function",
                                          function={"name": "get_time", "arguments": ""})]}),
        _delta({"tool_calls": [call_delta(1, function={"arguments": "{\"tz\": \"CET\"}"})]}),
        _delta({}, "tool_calls"),
    ]
    body = b"".join(sse_event(compact(_chat_chunk(c))) for c in chunks)
    return body + sse_event(compact(_chat_chunk([], usage=USAGE_NO_DETAILS))) + sse_event("[DONE]")


def openai_chat_stream_error() -> bytes:
    """Content, then the provider gives up mid-stream with an error object."""
    first = sse_event(compact(_chat_chunk(_delta({"role": "assistant", "content": "Par"}))))
    error = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                       "type": "server_error", "param": None, "code": None}}
    return first + sse_event(compact(error))


def openai_completions_stream() -> tuple[bytes, bytes]:
    """Legacy /v1/completions with include_usage: text chunks, usage chunk, [DONE]."""
    def chunk(choices: list[Any], usage: Any = None) -> dict[str, Any]:
        return {"id": "cmpl-9zK2", "object": "text_completion", "created": CREATED,
                "model": "gpt-3.5-turbo-instruct:20230824-v2", "choices": choices, "usage": usage}

    parts = [
        chunk([{"text": "\n\nOnce", "index": 0, "logprobs": None, "finish_reason": None}]),
        chunk([{"text": " upon a time", "index": 0, "logprobs": None, "finish_reason": None}]),
        chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]),
    ]
    usage_raw = sse_event(compact(chunk([], {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})))
    return b"".join(sse_event(compact(p)) for p in parts) + usage_raw + sse_event("[DONE]"), usage_raw


# --- OpenAI Responses --------------------------------------------------------------------

RESP_ID = "resp_68af2c1e0b948190a4c7f1d2"


def _response(status: str, usage: Any, **extra: Any) -> dict[str, Any]:
    return {"id": RESP_ID, "object": "response", "created_at": CREATED, "status": status,
            "error": None, "incomplete_details": None, "model": "o4-mini-2025-04-16",
            "output": [], "usage": usage, **extra}


RESPONSES_USAGE = {
    "input_tokens": 2048,
    "input_tokens_details": {"cached_tokens": 1920},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 384},
    "total_tokens": 2548,
}


def responses_stream(terminal: str = "response.completed", **terminal_extra: Any) -> bytes:
    """event:+data: pairs; usage is null until the terminal event."""
    seq = iter(range(100))
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response("in_progress", None)}),
        ("response.in_progress", {"response": _response("in_progress", None)}),
        ("response.output_text.delta", {"item_id": "msg_1", "output_index": 1, "content_index": 0,
                                        "delta": "Hello"}),
        ("response.output_text.delta", {"item_id": "msg_1", "output_index": 1, "content_index": 0,
                                        "delta": " there"}),
    ]
    status = terminal.removeprefix("response.")
    usage = terminal_extra.pop("usage", RESPONSES_USAGE)
    events.append((terminal, {"response": _response(status, usage, **terminal_extra)}))
    return b"".join(
        sse_event(compact({"type": name, "sequence_number": next(seq), **payload}), event=name)
        for name, payload in events
    )


def responses_stream_error_event() -> bytes:
    created = sse_event(compact({"type": "response.created", "sequence_number": 0,
                                 "response": _response("in_progress", None)}), event="response.created")
    error = {"type": "error", "code": "rate_limit_exceeded",
             "message": "Rate limit reached for o4-mini on tokens per min (TPM).", "param": None,
             "sequence_number": 1}
    return created + sse_event(compact(error), event="error")


# --- Anthropic Messages ------------------------------------------------------------------

ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"


def padded(obj: Any, pad: int) -> str:
    """Anthropic's recorded quirk: spaces before the last brace of the data line."""
    text = compact(obj)
    return text[:-1] + " " * pad + "}"


def _anthropic(events: list[tuple[str, Any]]) -> bytes:
    out = b""
    for i, (name, payload) in enumerate(events):
        data = payload if isinstance(payload, str) else padded(payload, (i * 7) % 13 + 1)
        out += sse_event(data, event=name)
    return out


def _message_start(usage: dict[str, Any]) -> tuple[str, Any]:
    return ("message_start", {"type": "message_start", "message": {
        "model": ANTHROPIC_MODEL, "id": "msg_01XbQk7", "type": "message", "role": "assistant",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})


def anthropic_stream() -> bytes:
    """Thinking, text and a tool_use block; cache read + 5m/1h writes; thinking in message_delta."""
    start_usage = {
        "input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 10000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
        "output_tokens": 1, "service_tier": "standard",
    }
    return _anthropic([
        _message_start(start_usage),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("ping", '{"type": "ping"}'),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "The user wants "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "the weather."}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "EqQBCkYIBx"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Let me check "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Paris."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "ris\", \"unit\": \"c\"}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 400, "output_tokens_details": {"thinking_tokens": 120}}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def anthropic_server_tool_stream() -> bytes:
    """Server-side web search: message_delta repeats input/cache counts, far larger than at start."""
    start_usage = {
        "input_tokens": 2479, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 6, "service_tier": "standard",
    }
    return _anthropic([
        _message_start(start_usage),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Found it."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"input_tokens": 90000, "cache_read_input_tokens": 0, "output_tokens": 500}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"input_tokens": 404500, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 1200, "output_tokens": 943,
                                     "output_tokens_details": {"thinking_tokens": 261},
                                     "server_tool_use": {"web_search_requests": 10, "web_fetch_requests": 0}}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def anthropic_overloaded_stream() -> bytes:
    """HTTP 200, a little text, then `event: error` overloaded_error."""
    start_usage = {"input_tokens": 812, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "output_tokens": 3}
    return _anthropic([
        _message_start(start_usage),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Sure"}}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ])


# --- Gemini ------------------------------------------------------------------------------

GEMINI_MODEL = "gemini-2.5-pro"


def gemini_chunk(text: str, usage: dict[str, Any], *, finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": GEMINI_MODEL,
            "responseId": "ru1garvBEoOiqtsP2fznmQw"}


GEMINI_FINAL_USAGE = {"promptTokenCount": 1200, "cachedContentTokenCount": 1000, "candidatesTokenCount": 300,
                      "thoughtsTokenCount": 500, "toolUsePromptTokenCount": 40, "totalTokenCount": 2040,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]}


def gemini_chunks() -> list[dict[str, Any]]:
    """Cumulative snapshots; zero counts omitted; the last one is the full count."""
    return [
        gemini_chunk("1\n2\n3", {"promptTokenCount": 1200, "cachedContentTokenCount": 1000,
                                 "candidatesTokenCount": 31, "thoughtsTokenCount": 500,
                                 "totalTokenCount": 1731}),
        gemini_chunk("\n4\n5", {"promptTokenCount": 1200, "cachedContentTokenCount": 1000,
                                "candidatesTokenCount": 179, "thoughtsTokenCount": 500,
                                "totalTokenCount": 1879}),
        gemini_chunk("\n6", GEMINI_FINAL_USAGE, finish="STOP"),
    ]


def gemini_sse() -> bytes:
    """alt=sse: only `data:` lines, events separated by CRLF CRLF, no [DONE]."""
    return b"".join(sse_event(json.dumps(c, ensure_ascii=False), eol="\r\n") for c in gemini_chunks())


def gemini_array() -> bytes:
    """streamGenerateContent without alt=sse: a pretty-printed JSON array, `\\n,\\r\\n` between items."""
    items = [json.dumps(c, indent=2, ensure_ascii=False) for c in gemini_chunks()]
    return ("[" + "\n,\r\n".join(items) + "\n]").encode()


def gemini_error_sse() -> bytes:
    first = gemini_chunk("Par", {"promptTokenCount": 7, "totalTokenCount": 7})
    error = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                       "status": "UNAVAILABLE"}}
    return sse_event(json.dumps(first), eol="\r\n") + sse_event(json.dumps(error), eol="\r\n")


# --- Ollama native -----------------------------------------------------------------------

OLLAMA_MODEL = "llama3.1:8b"


def _ollama_line(obj: dict[str, Any]) -> bytes:
    return (compact(obj) + "\n").encode()


def ollama_chat_lines(*, done: bool = True, prompt_eval: int | None = 26, eval_count: int | None = 290) -> bytes:
    """NDJSON: content lines, then the `done: true` line with counts (absent when None)."""
    out = b""
    for word in ("The", " sky", " is", " blue", "."):
        out += _ollama_line({"model": OLLAMA_MODEL, "created_at": "2026-01-01T00:00:00.1Z",
                             "message": {"role": "assistant", "content": word}, "done": False})
    if done:
        last: dict[str, Any] = {"model": OLLAMA_MODEL, "created_at": "2026-01-01T00:00:01Z",
                                "message": {"role": "assistant", "content": ""}, "done": True,
                                "done_reason": "stop", "total_duration": 5043500667,
                                "load_duration": 5025959, "prompt_eval_duration": 325953000,
                                "eval_duration": 4709213000}
        if prompt_eval is not None:
            last["prompt_eval_count"] = prompt_eval
        if eval_count is not None:
            last["eval_count"] = eval_count
        out += _ollama_line(last)
    return out
