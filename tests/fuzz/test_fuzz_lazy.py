"""The fast paths agree with the slow ones they replace, on any input.

- `loads` (orjson first, json where orjson differs) returns exactly what `json.loads` does;
- `request_json` (orjson, unguarded) finds the same model and stream fields as `json.loads`;
- the lazy stream meter (`LazyMeter`: events parsed once, at the end) passes on the same bytes
  per chunk, and ends with the same usage, model, error, end marker, meter error and rebuilt
  body as the eager `StreamMeter`, for any stream and any chunking, cut short or not.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from llm_proxy import apis
from llm_proxy.calls import request_json
from llm_proxy.stream.framing import SSEDecoder
from llm_proxy.stream.lazy import LazyMeter, data_events, frame
from llm_proxy.stream.meter import StreamMeter
from llm_proxy.usage import stream_parser
from llm_proxy.usage.base import loads, std_loads
from tests.fuzz.strategies import answer, dump, json_value
from tests.fuzz.test_fuzz_framing import stream_bytes
from tests.unit import transcripts as T


def same(a: Any, b: Any) -> bool:
    """Equal, telling 1 from 1.0 and -0.0 from 0.0, and NaN equal to NaN."""
    return json.dumps(a, default=repr, sort_keys=True) == json.dumps(b, default=repr, sort_keys=True) and \
        type(a) is type(b)


json_text = st.one_of(json_value.map(dump), st.dictionaries(st.text(max_size=6), json_value, max_size=5).map(dump))
body_bytes = st.one_of(
    json_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_text.map(lambda t: t.encode("utf-16")),
    json_text.map(lambda t: b"\xef\xbb\xbf" + t.encode()),
    stream_bytes,
)


@given(st.one_of(body_bytes, json_text))
@example(b'{"n":12345678901234567890123}')  # orjson: a float
@example('[-9223372036854775809]')
@example(b"NaN")
@example(b'"\\ud800"')
@example(b"\xef\xbb\xbf{}")
@example("\ufeff{}")
@example(b"[" * 2000 + b"]" * 2000)
def test_loads_is_json_loads(data: bytes | str) -> None:
    assert same(loads(data), std_loads(data))


@given(json_value, st.one_of(st.none(), json_value), st.one_of(st.none(), json_value), st.booleans())
def test_request_json_finds_model_and_stream_as_json_does(extra: Any, model: Any, stream: Any, first: bool) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": extra}]}
    if model is not None:
        body["model"] = model
    if stream is not None:
        body["stream"] = stream
    raw = dump(body).encode("utf-8", "surrogatepass")
    fast, slow = request_json(raw), std_loads(raw)
    assert (fast is None) == (slow is None)
    if isinstance(slow, dict):
        assert isinstance(fast, dict)
        for key in ("model", "stream"):
            f, s = fast.get(key), slow.get(key)
            assert (isinstance(f, str), f if isinstance(f, str) else None) == \
                (isinstance(s, str), s if isinstance(s, str) else None)
            assert (f is True) == (s is True) and (f is False) == (s is False)
        for api in (apis.OPENAI_CHAT, apis.OLLAMA_CHAT):
            assert apis.wants_stream(api, "/x", fast) == apis.wants_stream(api, "/x", slow)


@given(stream_bytes, st.booleans())
@example(b"data: x\n\n\ndata: y\n:c\nevent: e\ndata\n\n\xff", True)
def test_frame_is_the_sse_decoder_on_cr_free_text(data: bytes, final: bool) -> None:
    data = data.replace(b"\r", b"")
    decoder = SSEDecoder()
    expected = decoder.feed(data) + (decoder.flush() if final else [])
    assert frame(data, final=final) == expected
    assert data_events(data, final=final) == [(e.name, e.data) for e in expected if e.data]


_API = {"openai-chat": apis.OPENAI_CHAT, "openai-completions": apis.OPENAI_COMPLETIONS,
        "openai-responses": apis.OPENAI_RESPONSES, "anthropic-messages": apis.ANTHROPIC_MESSAGES,
        "gemini-generate-stream": apis.GEMINI_GENERATE}


def _outputs(meter: StreamMeter, pieces: list[bytes], end: bool) -> list[bytes]:
    out = []
    for piece in [*pieces, *([b""] if end else [])]:
        result = meter(piece)
        out.append(b"".join(result) if isinstance(result, list) else result)
    meter.finish()
    return out


@given(st.sampled_from(sorted(_API)).flatmap(lambda shape: st.tuples(st.just(shape), answer(shape))),
       st.lists(st.integers(0, 1 << 16), max_size=12), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([64, 1 << 20]), st.sampled_from([0, 100, 1 << 18]))
def test_lazy_meter_is_the_eager_meter(shaped: tuple[str, Any], offsets: list[int], strip: bool, end: bool,
                                       crlf: bool, max_event: int, batch: int) -> None:
    shape, reply = shaped
    api = _API[shape]
    data = b"".join(reply.events)
    if crlf and data:
        data = data[: len(data) // 2] + b"\r\n" + data[len(data) // 2:]
    bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    strip = strip and api in (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS)
    eager = StreamMeter(stream_parser(api, strip_usage_chunk=strip), SSEDecoder(max_event), strip=strip)
    lazy = LazyMeter(stream_parser(api, strip_usage_chunk=strip), SSEDecoder(max_event), strip=strip)
    lazy.batch_bytes = batch  # finished events parsed in batches as the stream goes
    assert _outputs(lazy, pieces, end) == _outputs(eager, pieces, end)
    for attr in ("usage", "response_model", "error", "complete"):
        assert getattr(lazy.parser, attr) == getattr(eager.parser, attr), attr
    assert same(lazy.parser.body(), eager.parser.body())
    assert (lazy.meter_error, lazy.ended, lazy.first_byte_at is None) == \
        (eager.meter_error, eager.ended, eager.first_byte_at is None)


@given(st.lists(st.integers(0, 1 << 12), max_size=12), st.booleans(), st.sampled_from([b"\n", b"\r\n"]))
def test_lazy_meter_strips_the_injected_usage_chunk_as_the_eager_one(offsets: list[int], end: bool,
                                                                      eol: bytes) -> None:
    data, usage_chunk = T.openai_chat_stream()
    data = data.replace(b"\n", eol)
    usage_chunk = usage_chunk.replace(b"\n", eol)
    bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    eager = StreamMeter(stream_parser(apis.OPENAI_CHAT, strip_usage_chunk=True), SSEDecoder(), strip=True)
    lazy = LazyMeter(stream_parser(apis.OPENAI_CHAT, strip_usage_chunk=True), SSEDecoder(), strip=True)
    lazy.batch_bytes = 300
    out = _outputs(lazy, pieces, end)
    assert out == _outputs(eager, pieces, end)
    if end:
        assert b"".join(out) == data.replace(usage_chunk, b"")
    assert lazy.parser.usage == eager.parser.usage and lazy.parser.usage.total_tokens == 1516
