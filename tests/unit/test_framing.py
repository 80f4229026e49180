"""Framing: SSE, NDJSON and JSON-array decoders under every possible chunking."""

from __future__ import annotations

import json

import pytest

from llm_proxy.stream.framing import Event, JSONArrayDecoder, NDJSONDecoder, SSEDecoder
from tests.unit import transcripts as T


def decode(decoder_cls, data: bytes, sizes=None, cuts=None, **kw) -> list[Event]:
    """Feed `data` in pieces (fixed `sizes`, or at explicit `cuts`), then flush."""
    dec = decoder_cls(**kw)
    if cuts is not None:
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    elif sizes is not None:
        pieces = [data[i:i + sizes] for i in range(0, len(data), sizes)]
    else:
        pieces = [data]
    events: list[Event] = []
    for piece in pieces:
        if piece:
            events += dec.feed(piece)
    return events + dec.flush()


# A transcript exercising all SSE features: comments, event names, ping, multi-line data,
# CRLF, lone CR, multi-byte characters, and an unterminated last event.
MIXED_SSE = (
    b": keep-alive comment\n\n"
    b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\r\nretry: 1000\r\nevent: delta\r\ndata: {\"t\":\"\xc3\xa7a \xe6\x97\xa5\"}\r\n\r\n"
    b"data: lone-cr\r\r"
    b":comment-no-space\ndata:nospace\n\n"
    b"data: tail-without-blank-line"
)
MIXED_EXPECTED = [
    (None, ""),
    ("ping", '{"type": "ping"}'),
    (None, "line one\nline two"),
    ("delta", '{"t":"ça 日"}'),
    (None, "lone-cr"),
    (None, "nospace"),
    (None, "tail-without-blank-line"),
]

SSE_TRANSCRIPTS = {
    "mixed": MIXED_SSE,
    "openai-chat": T.openai_chat_stream()[0],
    "anthropic-padded": T.anthropic_stream(),
    "gemini-crlf": T.gemini_sse(),
    "responses": T.responses_stream(),
}


def test_sse_mixed_transcript_events():
    events = decode(SSEDecoder, MIXED_SSE)
    assert [(e.name, e.data) for e in events] == MIXED_EXPECTED
    assert b"".join(e.raw for e in events) == MIXED_SSE
    assert events[3].raw == (
        b"id: 7\r\nretry: 1000\r\nevent: delta\r\ndata: {\"t\":\"\xc3\xa7a \xe6\x97\xa5\"}\r\n\r\n"
    )
    assert events[-1].raw == b"data: tail-without-blank-line"


@pytest.mark.parametrize("name", sorted(SSE_TRANSCRIPTS))
@pytest.mark.parametrize("size", [1, 2, 7])
def test_sse_fixed_piece_sizes_give_identical_events(name, size):
    data = SSE_TRANSCRIPTS[name]
    whole = decode(SSEDecoder, data)
    assert decode(SSEDecoder, data, sizes=size) == whole
    assert b"".join(e.raw for e in whole) == data


# Every split point is quadratic in the transcript size: use the shorter Anthropic stream here
# (the long one is covered by the fixed piece sizes above, 1-byte pieces included).
SPLIT_TRANSCRIPTS = {**SSE_TRANSCRIPTS, "anthropic-padded": T.anthropic_overloaded_stream()}


@pytest.mark.parametrize("name", sorted(SPLIT_TRANSCRIPTS))
def test_sse_every_single_split_point(name):
    data = SPLIT_TRANSCRIPTS[name]
    whole = decode(SSEDecoder, data)
    for cut in range(1, len(data)):
        assert decode(SSEDecoder, data, cuts=[cut]) == whole, f"split at byte {cut}"


def test_sse_every_pair_of_split_points_on_mixed():
    whole = decode(SSEDecoder, MIXED_SSE)
    n = len(MIXED_SSE)
    for a in range(1, n, 3):
        for b in range(a + 1, n, 5):
            assert decode(SSEDecoder, MIXED_SSE, cuts=[a, b]) == whole, (a, b)


def test_sse_gemini_crlf_events():
    data = T.gemini_sse()
    events = decode(SSEDecoder, data)
    assert len(events) == 3
    assert all(e.raw.endswith(b"\r\n\r\n") for e in events)
    assert [json.loads(e.data)["usageMetadata"]["candidatesTokenCount"] for e in events] == [31, 179, 300]


def test_sse_crlf_split_between_chunks_waits_for_the_lf():
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n\r") == []  # the blank line's CR may still be the first half of CRLF
    assert dec.feed(b"\n") == [Event(b"data: a\r\n\r\n", None, "a")]
    assert dec.flush() == []


def test_sse_lone_cr_line_endings():
    dec = SSEDecoder()
    assert dec.feed(b"event: x\rdata: 1\r\rdata: 2\r") == [Event(b"event: x\rdata: 1\r\r", "x", "1")]
    # The trailing CR turns out to be a line end on its own.
    assert dec.feed(b"\r") == []
    assert dec.feed(b"data: 3\r\r") == [Event(b"data: 2\r\r", None, "2")]
    assert dec.flush() == [Event(b"data: 3\r\r", None, "3")]


def test_sse_comment_only_event_and_ping():
    events = decode(SSEDecoder, b": OPENROUTER PROCESSING\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n")
    assert events == [
        Event(b": OPENROUTER PROCESSING\n\n", None, ""),
        Event(b"event: ping\ndata: {\"type\": \"ping\"}\n\n", "ping", '{"type": "ping"}'),
    ]


def test_sse_multiline_data_joined_with_lf():
    events = decode(SSEDecoder, b"data: {\"a\":\ndata:  1}\n\n")
    assert events == [Event(b"data: {\"a\":\ndata:  1}\n\n", None, '{"a":\n 1}')]
    assert json.loads(events[0].data) == {"a": 1}


def test_sse_unterminated_last_event_flushed():
    dec = SSEDecoder()
    assert dec.feed(b"data: [DONE]") == []
    assert dec.flush() == [Event(b"data: [DONE]", None, "[DONE]")]
    assert dec.flush() == []


def test_sse_flush_of_event_ending_in_cr():
    dec = SSEDecoder()
    assert dec.feed(b"event: done\ndata: x\r") == []
    assert dec.flush() == [Event(b"event: done\ndata: x\r", "done", "x")]


def test_sse_event_name_does_not_leak_into_next_event():
    events = decode(SSEDecoder, b"event: ping\ndata: {}\n\ndata: {\"n\":1}\n\n")
    assert [(e.name, e.data) for e in events] == [("ping", "{}"), (None, '{"n":1}')]


def test_sse_overflow_when_an_unfinished_event_outgrows_the_bound():
    dec = SSEDecoder(max_event_bytes=64)
    assert dec.feed(b"data: small\n\n") == [Event(b"data: small\n\n", None, "small")]
    assert dec.overflowed is False
    dec.feed(b"data: " + b"x" * 50)
    assert dec.overflowed is False
    dec.feed(b"x" * 20)
    assert dec.overflowed is True
    assert dec.take_pending() == b"data: " + b"x" * 70


def test_sse_large_complete_line_in_many_pieces_is_not_quadratic_and_exact():
    payload = "e" * 60_000  # tens-of-KB lines happen (encrypted tool content)
    data = f"data: {{\"c\":\"{payload}\"}}\n\n".encode()
    events = decode(SSEDecoder, data, sizes=1000)
    assert events == [Event(data, None, f'{{"c":"{payload}"}}')]


# --- NDJSON ------------------------------------------------------------------------------

def test_ndjson_ollama_lines():
    data = T.ollama_chat_lines()
    events = decode(NDJSONDecoder, data)
    assert len(events) == 6
    assert b"".join(e.raw for e in events) == data
    assert json.loads(events[-1].data)["eval_count"] == 290
    assert all(e.name is None and e.raw.endswith(b"\n") for e in events)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_ndjson_fixed_piece_sizes(size):
    data = T.ollama_chat_lines() + b'{"error":"caf\xc3\xa9 overloaded"}\r\n'
    whole = decode(NDJSONDecoder, data)
    assert decode(NDJSONDecoder, data, sizes=size) == whole
    assert whole[-1] == Event(b'{"error":"caf\xc3\xa9 overloaded"}\r\n', None, '{"error":"café overloaded"}')


def test_ndjson_every_split_point():
    data = T.ollama_chat_lines()[:400] + b"\n" + b'{"done":true}\r\n{"x":1}'
    whole = decode(NDJSONDecoder, data)
    assert b"".join(e.raw for e in whole) == data
    for cut in range(1, len(data)):
        assert decode(NDJSONDecoder, data, cuts=[cut]) == whole, cut


def test_ndjson_missing_trailing_newline_flushed():
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\n{"done":true,"eval_count":3}') == [Event(b'{"a":1}\n', None, '{"a":1}')]
    assert dec.flush() == [Event(b'{"done":true,"eval_count":3}', None, '{"done":true,"eval_count":3}')]
    assert dec.flush() == []


def test_ndjson_overflow_without_newline():
    dec = NDJSONDecoder(max_event_bytes=32)
    dec.feed(b'{"message":"' + b"y" * 19)
    assert dec.overflowed is False
    dec.feed(b"yy")
    assert dec.overflowed is True


def test_ndjson_overflow_when_the_tail_after_a_newline_outgrows_the_bound():
    # One chunk completes a line and then carries an unfinished line already past the bound.
    dec = NDJSONDecoder(max_event_bytes=32)
    events = dec.feed(b'{"a":1}\n{"message":"' + b"y" * 60)
    assert events == [Event(b'{"a":1}\n', None, '{"a":1}')]
    assert dec.overflowed is True


# --- JSON array --------------------------------------------------------------------------

def test_json_array_gemini_stream():
    data = T.gemini_array()
    assert b"\n,\r\n" in data
    events = decode(JSONArrayDecoder, data)
    assert [json.loads(e.data) for e in events] == T.gemini_chunks()
    assert events[0].raw == data
    assert [e.raw for e in events[1:]] == [b"", b""]


@pytest.mark.parametrize("size", [1, 2, 7])
def test_json_array_any_chunking(size):
    data = T.gemini_array()
    assert decode(JSONArrayDecoder, data, sizes=size) == decode(JSONArrayDecoder, data)


def test_json_array_feed_yields_nothing_until_flush():
    dec = JSONArrayDecoder()
    assert dec.feed(b'[{"a": 1}') == []
    assert dec.feed(b'\n,\r\n{"b": 2}\n]') == []
    assert dec.flush() == [Event(b'[{"a": 1}\n,\r\n{"b": 2}\n]', None, '{"a": 1}'), Event(b"", None, '{"b": 2}')]


def test_json_array_cut_short_keeps_complete_items_and_all_bytes():
    data = b'[{"a": 1}\n,\r\n{"b": '
    events = decode(JSONArrayDecoder, data)
    assert events == [Event(data, None, '{"a": 1}')]


def test_json_array_garbage_keeps_raw():
    assert decode(JSONArrayDecoder, b"<html>502</html>") == [Event(b"<html>502</html>", None, "")]


def test_json_array_overflow():
    dec = JSONArrayDecoder(max_event_bytes=10)
    dec.feed(b"[{\"a\": 1}")
    assert dec.overflowed is False
    dec.feed(b",{}")
    assert dec.overflowed is True
