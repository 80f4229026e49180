"""StreamMeter: never costs the client a byte; strips only the injected usage chunk."""

from __future__ import annotations

import pytest

from llm_proxy.stream.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder
from llm_proxy.stream.meter import StreamMeter, decoder_for
from llm_proxy.usage import anthropic, gemini, ollama, openai
from llm_proxy.usage.base import StreamParser
from tests.unit import transcripts as T


def pieces_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def run(meter: StreamMeter, pieces: list[bytes]) -> list[bytes | list[bytes]]:
    """What mitmproxy would do: each chunk, then the final b""."""
    return [meter(p) for p in pieces] + [meter(b"")]


def flatten(outputs) -> bytes:
    out = b""
    for o in outputs:
        out += b"".join(o) if isinstance(o, list) else o
    return out


def chat_meter(strip: bool, **kw) -> StreamMeter:
    return StreamMeter(openai.ChatStream(strip_usage_chunk=strip), SSEDecoder(**kw), strip=strip)


@pytest.mark.parametrize("decoder_type", ["text/event-stream; charset=utf-8", "application/x-ndjson",
                                          "application/json", "application/jsonl"])
def test_decoder_for(decoder_type):
    expected = {"text/event-stream; charset=utf-8": SSEDecoder, "application/x-ndjson": NDJSONDecoder,
                "application/json": JSONArrayDecoder, "application/jsonl": NDJSONDecoder}[decoder_type]
    assert type(decoder_for(decoder_type.upper())) is expected


# --- passthrough -------------------------------------------------------------------------

@pytest.mark.parametrize("make,data,decoder", [
    (openai.ChatStream, T.openai_chat_stream()[0], SSEDecoder),
    (anthropic.MessagesStream, T.anthropic_stream(), SSEDecoder),
    (gemini.GenerateStream, T.gemini_sse(), SSEDecoder),
    (gemini.GenerateStream, T.gemini_array(), JSONArrayDecoder),
    (ollama.NativeStream, T.ollama_chat_lines(), NDJSONDecoder),
])
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_passthrough_returns_each_chunk_unchanged(make, data, decoder, size):
    meter = StreamMeter(make(), decoder(), strip=False)
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    outputs = run(meter, pieces)
    assert all(out is piece for out, piece in zip(outputs, pieces))
    assert outputs[-1] == b""
    assert meter.ended is True
    assert meter.meter_error is None
    assert meter.first_byte_at is not None
    assert meter.parser.usage.known


def test_passthrough_meters_openai_usage_and_keeps_the_usage_chunk():
    data, usage_raw = T.openai_chat_stream()
    meter = chat_meter(strip=False)
    outputs = run(meter, [data])
    assert outputs == [data, b""]
    assert usage_raw in outputs[0]
    assert meter.parser.usage.input_tokens == 1204
    assert meter.parser.usage.output_tokens == 312


# --- strip -------------------------------------------------------------------------------

def test_strip_removes_exactly_the_usage_chunk_whole_stream():
    data, usage_raw = T.openai_chat_stream()
    meter = chat_meter(strip=True)
    outputs = run(meter, [data])
    assert outputs[0] == [data.replace(usage_raw, b"")]
    assert outputs[1] == []  # nothing left at the end
    assert flatten(outputs) == data.replace(usage_raw, b"")
    assert b'"choices":[]' not in flatten(outputs)
    u = meter.parser.usage
    assert (u.input_tokens, u.output_tokens, u.cached_tokens, u.reasoning_tokens) == (1204, 312, 1024, 64)


def test_strip_every_split_point():
    data, usage_raw = T.openai_chat_stream()
    expected = data.replace(usage_raw, b"")
    assert len(expected) == len(data) - len(usage_raw)
    for cut in range(1, len(data)):
        meter = chat_meter(strip=True)
        outputs = run(meter, pieces_at(data, [cut]))
        for out in outputs[:-1]:
            assert isinstance(out, list), cut
            assert b"" not in out, cut
        assert flatten(outputs) == expected, cut
        assert meter.parser.usage.total_tokens == 1516, cut


@pytest.mark.parametrize("size", [1, 2, 7])
def test_strip_fixed_pieces_never_yield_empty_bytes(size):
    data, usage_raw = T.openai_chat_stream()
    meter = chat_meter(strip=True)
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    outputs = run(meter, pieces)
    assert all(isinstance(o, list) and b"" not in o for o in outputs)
    assert flatten(outputs) == data.replace(usage_raw, b"")


def test_strip_keeps_everything_when_no_usage_chunk_arrives():
    data, usage_raw = T.openai_chat_stream(usage=None)
    assert usage_raw == b""
    meter = chat_meter(strip=True)
    assert flatten(run(meter, pieces_at(data, [100, 333]))) == data
    assert meter.parser.usage.known is False


def test_strip_legacy_completions_usage_chunk():
    data, usage_raw = T.openai_completions_stream()
    meter = StreamMeter(openai.ChatStream(strip_usage_chunk=True, legacy=True), SSEDecoder(), strip=True)
    assert flatten(run(meter, pieces_at(data, [50, 51, 300]))) == data.replace(usage_raw, b"")
    assert meter.parser.usage.input_tokens == 5
    assert meter.parser.usage.output_tokens == 7


def test_strip_does_not_remove_usage_on_a_chunk_with_choices():
    # Some OpenAI-compatible providers put usage on the last content chunk: that is content.
    chunk = (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}],'
             b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n')
    data = chunk + b"data: [DONE]\n\n"
    meter = chat_meter(strip=True)
    assert flatten(run(meter, [data])) == data
    assert meter.parser.usage.total_tokens == 4


# --- failures ----------------------------------------------------------------------------

class ExplodingParser(StreamParser):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def on_event(self, name, data):
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("parser bug")
        return True

    def finish(self):
        raise RuntimeError("finish bug")


@pytest.mark.parametrize("strip", [False, True])
def test_a_raising_parser_loses_no_bytes(strip):
    data, _ = T.openai_chat_stream()
    meter = StreamMeter(ExplodingParser(), SSEDecoder(), strip=strip)
    outputs = run(meter, pieces_at(data, [10, 200, 201, 600]))
    assert flatten(outputs) == data
    assert meter.parser.calls == 6  # every non-empty event still reached it
    assert meter.meter_error is None
    assert meter.ended is True


@pytest.mark.parametrize("strip", [False, True])
def test_oversized_event_sets_meter_error_and_bytes_still_pass(strip):
    big = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"z" * 300 + b'"}}]}\n\n'
    head, _ = T.openai_chat_stream(usage=None)
    data = head + big + b"data: [DONE]\n\n"
    meter = chat_meter(strip=strip, max_event_bytes=256)
    outputs = run(meter, [data[i:i + 100] for i in range(0, len(data), 100)])
    assert flatten(outputs) == data
    assert meter.meter_error == "an event grew past 256 bytes; usage not metered"
    if strip:
        assert all(isinstance(o, (list, bytes)) for o in outputs)
        assert all(o != [b""] for o in outputs)


def test_decoder_failure_gives_up_without_losing_or_repeating_bytes(monkeypatch):
    data, _ = T.openai_chat_stream()
    decoder = SSEDecoder()
    real_field = decoder._field
    seen = {"n": 0}

    def flaky_field(line):
        seen["n"] += 1
        if seen["n"] == 3:
            raise ValueError("decoder bug")
        real_field(line)

    monkeypatch.setattr(decoder, "_field", flaky_field)
    meter = StreamMeter(openai.ChatStream(strip_usage_chunk=True), decoder, strip=True)
    outputs = run(meter, pieces_at(data, [30, 450, 451, 900]))
    assert flatten(outputs) == data  # after giving up nothing is stripped any more
    assert meter.meter_error == "meter error: ValueError('decoder bug')"


def test_after_giving_up_chunks_pass_as_they_are():
    meter = chat_meter(strip=True, max_event_bytes=8)
    first = meter(b"data: 0123456789")
    assert first == [b"data: 0123456789"]
    assert meter(b"abc") == b"abc"
    assert meter(b"") == b""
