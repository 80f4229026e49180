"""The AWS event-stream decoder and the Bedrock parsers under hostile bytes.

Properties:
- neither the decoder nor the meter driving a Bedrock parser ever raises, whatever the bytes;
- the client gets exactly the bytes that came (the meter passes every chunk on);
- no count is ever negative (or past what a row can store);
- the events do not depend on where the network cut the stream;
- frames that are valid but carry arbitrary headers and payloads decode to those payloads.
"""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from llm_proxy import apis
from llm_proxy.stream.eventstream import EventStreamDecoder, encode
from llm_proxy.stream.meter import StreamMeter
from llm_proxy.usage import stream_parser
from llm_proxy.usage.model import MAX_COUNT
from tests.unit import cloud_transcripts as T

_COUNTS = st.one_of(st.integers(-5, 2**40), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
                    st.booleans())
_USAGE = st.fixed_dictionaries({}, optional={
    "inputTokens": _COUNTS, "outputTokens": _COUNTS, "cacheReadInputTokens": _COUNTS,
    "cacheWriteInputTokens": _COUNTS, "input_tokens": _COUNTS, "output_tokens": _COUNTS,
    "cache_read_input_tokens": _COUNTS, "cache_creation_input_tokens": _COUNTS,
})
_NAMES = st.sampled_from(["metadata", "messageStart", "contentBlockDelta", "contentBlockStart", "messageStop",
                          "chunk", "x"])


@st.composite
def frames(draw) -> bytes:
    """Valid frames whose payloads are plausible-but-hostile Bedrock events."""
    out = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_NAMES)
        usage = draw(_USAGE)
        if name == "chunk":
            inner = draw(st.sampled_from([
                {"type": "message_start", "message": {"usage": usage}},
                {"type": "message_delta", "usage": usage},
                {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": usage.get("inputTokens"), "outputTokenCount": usage.get("outputTokens")}},
            ]))
            payload = {"bytes": draw(st.one_of(st.just(base64.b64encode(json.dumps(inner).encode()).decode()),
                                               st.text(max_size=8), st.integers()))}
        else:
            payload = {"usage": usage, "contentBlockIndex": draw(st.one_of(st.integers(-2, 3), st.text(max_size=2))),
                       "delta": draw(st.one_of(st.none(), st.just({"text": "x"}),
                                               st.just({"toolUse": {"input": "{"}})))}
        kind = draw(st.sampled_from(["event", "exception", "error", "other"]))
        out.append(encode({":message-type": kind, ":event-type": name, ":exception-type": name},
                          json.dumps(payload).encode()))
    return b"".join(out)


stream_bytes = st.one_of(
    st.binary(max_size=400),
    frames(),
    # valid frames with some bytes flipped, cut or inserted
    st.tuples(frames(), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0][:t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) + 1:]),
    st.just(T.CONVERSE_STREAM), st.just(T.INVOKE_STREAM),
)
cuts = st.lists(st.integers(0, 1 << 16), max_size=12)


def _pieces(data: bytes, offsets: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(stream_bytes, cuts)
def test_decoder_never_raises_and_is_chunking_invariant(data: bytes, offsets: list[int]) -> None:
    def decode(pieces: list[bytes]):
        decoder = EventStreamDecoder()
        events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.flush()
        return [(e.raw, e.name, e.data) for e in events], decoder.corrupt is not None
    assert decode(_pieces(data, offsets)) == decode([data])


@given(stream_bytes, cuts, st.sampled_from([apis.BEDROCK_CONVERSE, apis.BEDROCK_INVOKE]))
def test_meter_never_raises_never_alters_bytes_never_counts_below_zero(data: bytes, offsets: list[int],
                                                                      api: str) -> None:
    parser = stream_parser(api)
    assert parser is not None
    meter = StreamMeter(parser, EventStreamDecoder())
    out = b"".join(meter(piece) for piece in _pieces(data, offsets)) + meter(b"")
    assert out == data
    usage = parser.usage
    for name in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
                 "cache_write_1h_tokens", "total_tokens"):
        value = getattr(usage, name)
        assert value is None or 0 <= value <= MAX_COUNT, (name, value)
    parser.body()  # rebuilding the stored body never raises either


@given(st.lists(st.tuples(st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
                                          st.text(max_size=30), max_size=4),
                          st.binary(max_size=100)), max_size=5), cuts)
def test_valid_frames_decode_to_their_payloads(messages, offsets: list[int]) -> None:
    data = b"".join(encode(headers, payload) for headers, payload in messages)
    decoder = EventStreamDecoder()
    events = [e for piece in _pieces(data, offsets) for e in decoder.feed(piece)]
    assert decoder.corrupt is None
    assert b"".join(e.raw for e in events) == data
    assert len(events) == len(messages)
