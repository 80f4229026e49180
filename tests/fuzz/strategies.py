"""Hypothesis strategies for the fuzz layer: hostile requests and upstream answers.

Everything is built as bytes the way a client or a provider could send it, so
the addon sees what it would see on the wire: paths with bytes that are not
UTF-8 and `key=` parameters spelt in any case or percent-encoding, headers
carrying a known secret under every name an SDK uses, JSON with lone
surrogate escapes, NaN, 1e400, 100,000 levels of nesting, counts that are
negative or beyond 64 bits, and streams in each provider's framing cut
anywhere. JSON text is written by `dump` so that literals Python's json
module would never produce (`1e400`, `-Infinity`) can be planted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from functools import lru_cache

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

# Strategies are built once and reused: hypothesis validates each new strategy object, and building
# them inside composites on every draw made generation cost more than running the proxy.
BOOL = st.booleans()


@lru_cache(maxsize=None)
def _pick(options: tuple[Any, ...]) -> SearchStrategy[Any]:
    return st.sampled_from(options)


def pick(draw: st.DrawFn, *options: Any) -> Any:
    """One of `options` (hashable values; repeat one to make it likelier)."""
    return draw(_pick(options))


@lru_cache(maxsize=None)
def _below(n: int) -> SearchStrategy[int]:
    return st.integers(0, n)


def chance(draw: st.DrawFn, n: int) -> int:
    """0..n: `if chance(draw, 4)` is true four times in five."""
    return draw(_below(n))

# The client's key (passthrough: its own provider key; keys mode: the virtual key).
# Long and odd enough that no random draw contains it by chance.
SECRET = "sk-fuzzSECRET-9q7Zx2Lw4Vb8"
# The providers' real keys, set in the proxy's environment in keys mode.
REAL_KEY_PREFIX = "real-fuzzPROVIDERKEY-"


@dataclass(frozen=True)
class Raw:
    """A JSON literal written as is (`1e400`, `NaN`, `-Infinity`, `"\\ud800"`)."""

    text: str


def dump(value: Any) -> str:
    """JSON text of `value`, with Raw literals kept verbatim (iterative: values may nest deeply)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item.text)
        elif isinstance(item, Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Text("{")]
            for i, (k, v) in enumerate(item.items()):
                if i:
                    parts.append(_Text(","))
                parts.append(_Text(json.dumps(str(k)) + ":"))
                parts.append(v)
            parts.append(_Text("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, (list, tuple)):
            parts = [_Text("[")]
            for i, v in enumerate(item):
                if i:
                    parts.append(_Text(","))
                parts.append(v)
            parts.append(_Text("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item))  # ensure_ascii: a lone surrogate becomes its \\udXXX escape
    return "".join(out)


@dataclass(frozen=True)
class _Text:
    text: str


# --- scalars --------------------------------------------------------------------------

# Text with every code point, lone surrogates included (json.dumps writes them as escapes).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
lone_surrogate = st.sampled_from([Raw('"\\ud800"'), Raw('"\\udfff"'), Raw('"a\\udc80b"'), Raw('"\\ud83d"')])
weird_numbers = st.sampled_from([
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e400"), Raw("1e308"),
    Raw("12345678901234567890123456789"), Raw("-0"), Raw("0.5"), Raw("3.0"), Raw("1E2"),
])

# What a provider might put where a token count belongs.
count_value = st.one_of(
    st.integers(0, 2_000_000),
    st.integers(0, 2_000_000),
    st.integers(-2_000_000, -1),
    st.integers(2**31 - 2, 2**31 + 2),
    st.integers(2**63 - 2, 2**70),
    st.integers(-(2**70), -(2**63) + 2),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    weird_numbers,
    st.none(),
    st.booleans(),
    any_text,
    lone_surrogate,
    st.just({}),
    st.just([]),
)


def deep(depth: int, opener: str = "[") -> Raw:
    """`depth` levels of nesting: arrays, or objects with a key at every level."""
    if opener == "[":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# Shallow, around Python's recursion limit (~1000), and far beyond it (the parsers must not care).
deep_value = st.builds(deep, st.one_of(st.integers(1, 60), st.integers(990, 1010), st.sampled_from([5_000, 100_000])),
                       st.sampled_from(["[", "{"]))

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text, lone_surrogate,
                      weird_numbers)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(any_text, children, max_size=4)),
    max_leaves=12,
)


# --- requests -------------------------------------------------------------------------

def _percent_encode_some(draw: st.DrawFn, text: str) -> str:
    """Each character as is, upper-cased, or %XX-encoded (either hex case), at random."""
    out = []
    for ch in text:
        how = pick(draw, "same", "same", "upper", "pct", "pctlower")
        if how == "upper":
            out.append(ch.upper())
        elif how == "pct":
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        elif how == "pctlower":
            out.append("".join(f"%{b:02x}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def key_param(draw: st.DrawFn) -> str:
    """`key=SECRET` with the name and value spelt any way a parser still reads as the key."""
    name = _percent_encode_some(draw, "key")
    value = pick(draw, SECRET, SECRET, "pct")
    if value == "pct":
        value = "".join(f"%{b:02X}" if draw(BOOL) else chr(b) for b in SECRET.encode())
    return f"{name}={value}"


# Bytes a request line's target can hold: anything but whitespace.
random_path_bytes = st.binary(max_size=40).map(lambda b: b.translate(None, b" \t\r\n\x0b\x0c"))

KNOWN_PATHS = [
    ("/v1/chat/completions", "openai-chat"),
    ("/openai/v1/chat/completions", "openai-chat"),
    ("/v1/completions", "openai-completions"),
    ("/v1/embeddings", "openai-embeddings"),
    ("/v1/responses", "openai-responses"),
    ("/anthropic/v1/messages", "anthropic-messages"),
    ("/v1/messages", "anthropic-messages"),
    ("/anthropic/v1/messages/count_tokens", "anthropic-count-tokens"),
    ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", "gemini-generate"),
    ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini-generate-stream"),
    ("/ollama/api/chat", "ollama-chat"),
    ("/ollama/api/generate", "ollama-generate"),
    ("/ollama/api/embed", "ollama-embed"),
    ("/v1/models", "other"),
    ("/groq/openai/v1/chat/completions", "openai-chat"),
]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "claude-sonnet-4-5", "gemini-2.5-flash", "llama3.2",
          "o3-mini", "unknown-model"]


_KNOWN_PATH = st.sampled_from(KNOWN_PATHS)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def request_path(draw: st.DrawFn) -> tuple[bytes, str]:
    """(raw path, the shape it names): a known API path or random bytes, with a hostile query."""
    kind = pick(draw, "known", "known", "known", "random")
    if kind == "known":
        path, shape = draw(_KNOWN_PATH)
        raw = path.encode()
        if chance(draw, 9) == 0:  # random bytes inside a known path still route it
            raw = raw[:1] + draw(random_path_bytes).replace(b"?", b"") + b"/" + raw[1:]
    else:
        raw, shape = b"/" + draw(random_path_bytes), "random"
    params: list[bytes] = []
    for _ in range(chance(draw, 3)):
        which = pick(draw, "key", "key", "alt", "other", "bytes")
        if which == "key":
            params.append(draw(key_param()).encode())
        elif which == "alt":
            params.append(b"alt=sse")
        elif which == "other":
            params.append(pick(draw, b"x=1", b"a=%ZZ", b"=", b"key", b"&", b"beta=true", b"k=v=w"))
        else:
            params.append(draw(random_path_bytes).replace(b"&", b""))
    if params:
        sep = pick(draw, b"&", b"&&", b"&;")
        raw += b"?" + sep.join(params)
    return raw, shape


KEY_HEADER_NAMES = ["authorization", "x-api-key", "api-key", "x-goog-api-key"]


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def header_name_case(draw: st.DrawFn, name: str) -> bytes:
    return "".join(c.upper() if draw(BOOL) else c for c in name).encode()


header_token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~"), min_size=1,
                       max_size=12).map(str.encode)
header_value = st.binary(max_size=30).map(lambda b: b.translate(None, b"\r\n\x00"))


_EXTRA_HEADERS = st.lists(st.tuples(header_token, header_value), max_size=4)
_SOME_KEY_HEADERS = st.lists(st.sampled_from(KEY_HEADER_NAMES), min_size=1, max_size=3)
_MAYBE_KEY_HEADER = st.lists(st.sampled_from(KEY_HEADER_NAMES), max_size=1)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def request_headers(draw: st.DrawFn, *, secret_header: bool) -> list[tuple[bytes, bytes]]:
    """Random fields plus (when asked) the secret under one or more key header names."""
    fields: list[tuple[bytes, bytes]] = [(b"host", b"localhost:8080")]
    if draw(BOOL):
        fields.append((b"content-type", b"application/json"))
    fields += draw(_EXTRA_HEADERS)
    if secret_header:
        for name in draw(_SOME_KEY_HEADERS):
            if name == "authorization":
                value = pick(draw, f"Bearer {SECRET}", f"bearer  {SECRET}", SECRET, f"Basic {SECRET}")
            else:
                value = SECRET
            fields.append((draw(header_name_case(name)), value.encode()))
    else:  # a wrong key: in keys mode an unknown-key 401 with a row
        for name in draw(_MAYBE_KEY_HEADER):
            fields.append((draw(header_name_case(name)), draw(header_value)))
    return fields


_SHORT_BYTES = st.binary(max_size=64)
_BYTES = st.binary(max_size=200)
_MESSAGE_CONTENT = st.one_of(any_text, lone_surrogate, deep_value)
_STREAM_OPTIONS = st.sampled_from([{"include_usage": True}, {"include_usage": False}, None, [], "x", {"other": 1}])


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def request_body(draw: st.DrawFn, shape: str) -> bytes:
    """A body for the API the path names: its JSON shape with hostile values, or anything."""
    kind = pick(draw, "shaped", "shaped", "shaped", "json", "bytes", "deep", "empty")
    if kind == "empty":
        return b""
    if kind == "bytes":
        return draw(_SHORT_BYTES)
    if kind == "deep":
        return draw(deep_value).text.encode()
    if kind == "json":
        return dump(draw(json_value)).encode()
    body: dict[str, Any] = {"model": draw(model_value)}
    if shape.startswith("ollama"):
        body["messages"] = [{"role": "user", "content": draw(any_text)}]
        body["stream"] = pick(draw, True, False, None, Raw("1"))
    elif shape in ("openai-chat", "openai-completions", "openai-responses", "anthropic-messages"):
        body["messages"] = [{"role": "user", "content": draw(_MESSAGE_CONTENT)}]
        body["stream"] = pick(draw, True, True, False, None, "yes")
        if draw(BOOL):
            body["stream_options"] = draw(_STREAM_OPTIONS)
    else:
        body["contents"] = [{"parts": [{"text": draw(any_text)}]}]
    body = {k: v for k, v in body.items() if v is not None or draw(BOOL)}
    return dump(body).encode()


# --- upstream answers -----------------------------------------------------------------

@dataclass
class Answer:
    """What the fake upstream sends: status, content type, and the body as its events.

    `events` are the body's pieces in order; `strippable[i]` marks an OpenAI
    usage-only chunk, which the proxy removes when it injected include_usage
    (None: either outcome is right, see `_usage_only_chunk`).
    """

    status: int
    content_type: str
    events: list[bytes]
    strippable: list[bool | None] = field(default_factory=list)
    shape: str = ""

    @property
    def body(self) -> bytes:
        return b"".join(self.events)


def _sse(obj: Any, name: str | None = None, eol: str = "\n") -> bytes:
    text = (f"event: {name}{eol}" if name else "") + f"data: {obj if isinstance(obj, str) else dump(obj)}{eol}{eol}"
    return text.encode()


_ODD_USAGE = st.one_of(count_value, deep_value)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def openai_usage(draw: st.DrawFn, *, responses: bool = False) -> Any:
    names = ("input_tokens", "output_tokens") if responses else ("prompt_tokens", "completion_tokens")
    usage: dict[str, Any] = {}
    for name in (*names, "total_tokens"):
        if chance(draw, 5):
            usage[name] = draw(count_value)
    if draw(BOOL):
        usage["input_tokens_details" if responses else "prompt_tokens_details"] = {
            "cached_tokens": draw(count_value), "cache_write_tokens": draw(count_value)}
    if draw(BOOL):
        usage["output_tokens_details" if responses else "completion_tokens_details"] = {
            "reasoning_tokens": draw(count_value)}
    return usage if chance(draw, 4) else draw(_ODD_USAGE)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def anthropic_usage(draw: st.DrawFn) -> Any:
    usage = {name: draw(count_value) for name in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                                   "cache_creation_input_tokens") if chance(draw, 4)}
    if draw(BOOL):
        usage["cache_creation"] = {"ephemeral_1h_input_tokens": draw(count_value)}
    if draw(BOOL):
        usage["server_tool_use"] = {"web_search_requests": draw(count_value)}
    return usage if chance(draw, 3) else draw(count_value)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def gemini_usage(draw: st.DrawFn) -> Any:
    usage = {name: draw(count_value) for name in ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
                                                   "cachedContentTokenCount", "toolUsePromptTokenCount",
                                                   "totalTokenCount") if chance(draw, 3)}
    return usage if chance(draw, 3) else draw(count_value)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def ollama_final(draw: st.DrawFn) -> dict[str, Any]:
    final: dict[str, Any] = {"model": draw(_MODEL_TEXT), "done": True,
                             "message": {"role": "assistant", "content": ""}}
    for name in ("prompt_eval_count", "eval_count"):
        if chance(draw, 4):
            final[name] = draw(count_value)
    return final


model_value = st.one_of(st.sampled_from(MODELS), any_text, lone_surrogate, json_leaf)
_MODEL_TEXT = st.one_of(st.sampled_from(MODELS), any_text)
_BLOCK_START = st.sampled_from([{"type": "text", "text": ""}, {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                                {"type": "thinking", "thinking": ""}])
_ERROR_VALUE = st.one_of(any_text, st.fixed_dictionaries({"type": any_text, "message": st.one_of(any_text, lone_surrogate)}),
                         json_value)
# Python strings holding a lone surrogate: json.dumps writes them as the escape a provider could send.
surrogate_text = st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\ud83d"])
content_text = st.one_of(any_text, any_text, surrogate_text)
_TEXTS = st.lists(content_text, max_size=3)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def answer(draw: st.DrawFn, request_shape: str) -> Answer:
    """An upstream answer: usually in the shape the request asked for, sometimes in any other."""
    shapes = ["openai-json", "openai-sse", "responses-json", "responses-sse", "anthropic-json", "anthropic-sse",
              "gemini-json", "gemini-sse", "gemini-array", "ollama-json", "ollama-ndjson", "bytes", "error"]
    natural = {
        "openai-chat": ["openai-sse", "openai-json"], "openai-completions": ["openai-sse", "openai-json"],
        "openai-embeddings": ["openai-json"], "openai-responses": ["responses-sse", "responses-json"],
        "anthropic-messages": ["anthropic-sse", "anthropic-json"], "anthropic-count-tokens": ["anthropic-json"],
        "gemini-generate": ["gemini-json"], "gemini-generate-stream": ["gemini-sse", "gemini-array"],
        "ollama-chat": ["ollama-ndjson", "ollama-json"], "ollama-generate": ["ollama-ndjson", "ollama-json"],
        "ollama-embed": ["ollama-json"],
    }.get(request_shape, shapes)
    shape = pick(draw, *natural) if chance(draw, 2) else pick(draw, *shapes)
    eol = pick(draw, "\n", "\n", "\r\n")
    model = draw(model_value)
    status = pick(draw, 200, 200, 200, 200, 200, 201, 400, 401, 429, 500, 503)
    texts = draw(_TEXTS)
    events: list[bytes] = []
    strippable: list[bool | None] = []

    def add(piece: bytes) -> None:
        events.append(piece)
        strippable.append(_usage_only_chunk(piece) if shape != "bytes" else False)

    if shape == "openai-json":
        add(dump({"id": "c1", "object": "chat.completion", "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(texts)},
                               "finish_reason": "stop"}],
                  "usage": draw(openai_usage())}).encode())
        ctype = "application/json"
    elif shape == "openai-sse":
        for text in texts:
            add(_sse({"id": "c1", "object": "chat.completion.chunk", "model": model,
                      "choices": [{"index": 0, "delta": {"content": text}}]}, eol=eol))
        if draw(BOOL):
            add(_sse({"id": "c1", "choices": [{"index": (0 if chance(draw, 3) else draw(json_leaf)),
                                               "delta": ({} if chance(draw, 3) else draw(json_value)),
                                               "finish_reason": "stop"}]}, eol=eol))
        if chance(draw, 3):
            usage = draw(openai_usage())
            add(_sse({"id": "c1", "model": model, "choices": [], "usage": usage}, eol=eol))
        if chance(draw, 3):
            add(_sse("[DONE]", eol=eol))
        ctype = "text/event-stream"
    elif shape == "responses-json":
        add(dump({"id": "r1", "object": "response", "model": model, "output": [],
                  "usage": draw(openai_usage(responses=True))}).encode())
        ctype = "application/json"
    elif shape == "responses-sse":
        add(_sse({"type": "response.created", "response": {"id": "r1", "model": model}}, "response.created", eol))
        for text in texts:
            add(_sse({"type": "response.output_text.delta", "delta": text}, "response.output_text.delta", eol))
        terminal = pick(draw, "response.completed", "response.incomplete", "response.failed")
        add(_sse({"type": terminal, "response": {"id": "r1", "model": model,
                                                 "usage": draw(openai_usage(responses=True))}}, terminal, eol))
        ctype = "text/event-stream"
    elif shape == "anthropic-json":
        add(dump({"id": "m1", "type": "message", "model": model, "content": [{"type": "text", "text": "x"}],
                  "usage": draw(anthropic_usage())}).encode())
        ctype = "application/json"
    elif shape == "anthropic-sse":
        add(_sse({"type": "message_start", "message": {"id": "m1", "model": model, "content": [],
                                                       "usage": draw(anthropic_usage())}}, "message_start", eol))
        add(_sse({"type": "content_block_start", "index": (0 if chance(draw, 3) else draw(json_leaf)),
                  "content_block": draw(_BLOCK_START)},
                 "content_block_start", eol))
        for text in texts:
            kind, field_name = pick(draw, ("text_delta", "text"), ("input_json_delta", "partial_json"),
                                    ("thinking_delta", "thinking"))
            delta = {"type": kind, field_name: text}
            add(_sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta", eol))
        add(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop", eol))
        add(_sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": draw(anthropic_usage())},
                 "message_delta", eol))
        add(_sse({"type": "message_stop"}, "message_stop", eol))
        ctype = "text/event-stream"
    elif shape in ("gemini-json", "gemini-sse", "gemini-array"):
        objs = [{"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}}],
                 "usageMetadata": draw(gemini_usage()), "modelVersion": model} for t in texts or [""]]
        if shape == "gemini-json":
            add(dump(objs[-1]).encode())
            ctype = "application/json"
        elif shape == "gemini-sse":
            for obj in objs:
                add(_sse(obj, eol=eol))
            ctype = "text/event-stream"
        else:
            add(b"[")
            for i, obj in enumerate(objs):
                add((("," + eol) if i else "").encode() + dump(obj).encode())
            add(b"]")
            ctype = "application/json"
    elif shape in ("ollama-json", "ollama-ndjson"):
        final = draw(ollama_final())
        if shape == "ollama-json":
            add(dump(final).encode())
            ctype = "application/json"
        else:
            for text in texts:
                add((dump({"model": model, "message": {"role": "assistant", "content": text}, "done": False})
                     + "\n").encode())
            if chance(draw, 4):
                add((dump({"error": draw(any_text)}) + "\n").encode())
            add((dump(final) + "\n").encode())
            ctype = "application/x-ndjson"
    elif shape == "error":
        add(dump({"error": draw(_ERROR_VALUE)}).encode())
        ctype = pick(draw, "application/json", "text/event-stream")
    else:
        add(draw(_BYTES))
        ctype = pick(draw, "application/json", "text/event-stream", "application/x-ndjson",
                                      "text/plain", "application/jsonl", "")
    if chance(draw, 6) == 0:  # a deeply nested event or body from the provider
        add((dump(draw(deep_value)) + eol).encode() if ctype != "text/event-stream"
            else _sse(draw(deep_value), eol=eol))
    return Answer(status, ctype, events, strippable, shape)


def _usage_only_chunk(event: bytes) -> bool | None:
    """Whether an SSE event is an OpenAI usage-only chunk (`choices: []`, a usage that is truthy
    as Python's json reads it); None when its nesting is so deep that whether a parser gets through
    it depends on the stack depth it is called at."""
    text = event.decode("utf-8", "replace")
    if not text.startswith("data: "):
        return False
    try:
        obj = json.loads(text[len("data: "):].strip())
    except ValueError:
        return False
    except RecursionError:
        return None
    return isinstance(obj, dict) and bool(obj.get("usage")) and obj.get("choices") == []


@dataclass
class Delivery:
    """How the answer's bytes arrive: split points, and where (if anywhere) the stream is cut."""

    cut: int | None  # deliver only body[:cut]
    ends_with_error: bool  # the connection dropped (error hook) rather than ending cleanly
    splits: list[int]


_OFFSET = st.integers(0, 1 << 24)
_OFFSETS = st.lists(_OFFSET, max_size=12)


@lru_cache(maxsize=None)  # one strategy object per argument list
@st.composite
def delivery(draw: st.DrawFn, size: int) -> Delivery:
    """Cut points are drawn as large numbers and reduced modulo the size: one strategy
    serves every body size (a strategy per size would be built and validated per case)."""
    cut = draw(_OFFSET) % (size + 1) if not chance(draw, 2) else None
    end = size if cut is None else cut
    splits = sorted({offset % (end + 1) for offset in draw(_OFFSETS)})
    if not chance(draw, 4) and 0 < end <= 4096:
        splits = list(range(0, end, 1 + chance(draw, 6)))  # byte by byte, or nearly
    return Delivery(cut, draw(BOOL) if cut is not None else not chance(draw, 9), splits)
