"""Framing under hostile bytes: random chunkings must decode exactly as the whole stream does.

Properties, for each decoder (SSE, NDJSON, JSON array):
- it never raises, whatever the bytes;
- every byte fed is in exactly one event's `raw`, in order (the meter passes `raw` on, so a lost or
  doubled byte would reach the client);
- the events (name, data) do not depend on where the network cut the stream.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm_proxy.stream.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder

# Bytes rich in what framing cares about: line ends, blank lines, colons, field names, UTF-8 pieces.
_PIECES = st.sampled_from([
    b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b":", b": ", b"data:", b"data: ", b"event:", b"event: x",
    b"id: 1", b"retry: 5", b"{", b"}", b"[", b"]", b",", b'"', b"\\", b"\xc3", b"\xa7", b"\xe6\x97\xa5", b"\xff",
    b"\x00", b"[DONE]", b'{"a":1}', b" ", b"ping",
])
stream_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_PIECES, st.binary(max_size=8)), max_size=60).map(b"".join),
)
cuts = st.lists(st.integers(0, 1 << 16), max_size=20)


def _decode(decoder_cls, data: bytes, offsets: list[int]):
    decoder = decoder_cls()
    bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    events = []
    for start, end in zip(bounds, bounds[1:]):
        events += decoder.feed(data[start:end])
    return events + decoder.flush()


def _check(decoder_cls, data: bytes, offsets: list[int]) -> None:
    whole = _decode(decoder_cls, data, [])
    pieces = _decode(decoder_cls, data, offsets)
    assert b"".join(e.raw for e in whole) == data, "whole: bytes lost or doubled"
    assert b"".join(e.raw for e in pieces) == data, "chunked: bytes lost or doubled"
    assert [(e.name, e.data) for e in pieces] == [(e.name, e.data) for e in whole], "chunking changed the events"
    if decoder_cls is not JSONArrayDecoder:  # it hands every raw byte to its first event by design
        assert [e.raw for e in pieces] == [e.raw for e in whole], "chunking changed the events' bytes"


@given(stream_bytes, cuts)
def test_sse_decoder_is_chunking_invariant_and_loses_no_byte(data: bytes, offsets: list[int]) -> None:
    _check(SSEDecoder, data, offsets)


@given(stream_bytes, cuts)
def test_ndjson_decoder_is_chunking_invariant_and_loses_no_byte(data: bytes, offsets: list[int]) -> None:
    _check(NDJSONDecoder, data, offsets)


@given(stream_bytes, cuts)
def test_json_array_decoder_is_chunking_invariant_and_loses_no_byte(data: bytes, offsets: list[int]) -> None:
    _check(JSONArrayDecoder, data, offsets)


@given(st.integers(1, 64), stream_bytes, cuts)
def test_a_small_event_bound_only_flags_overflow(limit: int, data: bytes, offsets: list[int]) -> None:
    """With a tiny bound the decoder says it overflowed; what it did hand out is still exact bytes."""
    for decoder_cls in (SSEDecoder, NDJSONDecoder, JSONArrayDecoder):
        decoder = decoder_cls(max_event_bytes=limit)
        bounds = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
        out = b""
        for start, end in zip(bounds, bounds[1:]):
            out += b"".join(e.raw for e in decoder.feed(data[start:end]))
            if decoder.overflowed:
                out += decoder.take_pending()
                out += data[end:]
                break
        else:
            out += b"".join(e.raw for e in decoder.flush())
        assert out == data
