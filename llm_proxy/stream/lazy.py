"""The lazy stream meter: on the event loop only framing; the events are parsed once, at the end.

The eager `StreamMeter` cuts every chunk into events with a regular expression
per line and parses every event's JSON as it passes, about 15 µs per chunk of
a chat stream, on mitmproxy's event loop. Most of that can wait: a stream's
usage, model, error and end marker are only needed when the call ends. So this
meter, for SSE streams, keeps the chunks as they are and only tracks where the
last event ended (a `bytes.rfind`); when the stream ends it frames all events
at once (`frame`, a split on blank lines) and feeds them to the same parser the
eager meter uses, in the same order, so usage, ttft and the rebuilt body are
exactly what the eager meter finds.

Where bytes must be held back or removed (the usage chunk of an
`include_usage` the proxy injected), a chunk is framed on the loop only when
its finished events mention `"usage"` (or hold a `\\u00..` escape that could
spell it), and only those events are parsed.

Anything the fast path does not cover exactly switches to the eager meter for
the rest of the stream, after replaying the chunks kept so far through it: a
CR anywhere (SSE allows CR and CRLF line ends), an unfinished event of half
the decoder's bound. The eager meter then behaves as if it had seen every
chunk itself. A long stream is parsed in batches of `PARSE_BATCH_BYTES` as it
goes, so memory stays bounded and no batch holds the loop long.
"""

from __future__ import annotations

import logging
import time

from ..usage import StreamParser
from ..usage.base import loads, loads_unguarded, no_long_numbers
from .framing import Event, SSEDecoder
from .meter import StreamMeter, decoder_for

logger = logging.getLogger(__name__)

# Finished events kept beyond this are parsed there and then (memory stays bounded, and no call
# ends with a long parse on the loop: about 5 ms per batch).
PARSE_BATCH_BYTES = 256 * 1024
_MARKERS = (b'"usage"', b"\\u00")


def _field(line: bytes, fields: list[str], name: list[str | None]) -> None:
    """One non-empty SSE line, as `SSEDecoder._field` reads it."""
    if line[0] == 0x3A:  # ":" starts a comment
        return
    colon = line.find(b":")
    key, value = (line, b"") if colon < 0 else (line[:colon], line[colon + 1:])
    if value[:1] == b" ":
        value = value[1:]
    if key == b"data":
        fields.append(value.decode("utf-8", "replace"))
    elif key == b"event":
        name[0] = value.decode("utf-8", "replace")


def _event(raw: bytes, body: bytes) -> Event:
    """The event of `raw` whose lines (blank-line terminator excluded) are `body`."""
    if body.startswith(b"data: ") and b"\n" not in body:  # nearly every event: one data line
        return Event(raw, None, body[6:].decode("utf-8", "replace"))
    fields: list[str] = []
    name: list[str | None] = [None]
    for line in body.split(b"\n"):
        if line:
            _field(line, fields, name)
    return Event(raw, name[0], "\n".join(fields))


def frame(buf: bytes, *, final: bool) -> list[Event]:
    """The events of CR-free SSE text that starts at an event's start, as `SSEDecoder` hands
    them out fed any chunking of it.

    Only the events finished by a blank line, unless `final` (the end of the stream, as
    `SSEDecoder.flush`): then the unterminated rest is one more event.
    """
    events: list[Event] = []
    last = buf.rfind(b"\n\n")
    end = last + 2 if last >= 0 else (1 if buf[:1] == b"\n" else 0)
    pos = 0
    while pos < end:
        if buf[pos] == 0x0A:  # a blank line with no field before it: an empty event
            events.append(Event(buf[pos:pos + 1], None, ""))
            pos += 1
            continue
        stop = buf.find(b"\n\n", pos)
        events.append(_event(buf[pos:stop + 2], buf[pos:stop]))
        pos = stop + 2
    if final and end < len(buf):
        rest = buf[end:]
        events.append(_event(rest, rest.rstrip(b"\n")))
    return events


def data_events(buf: bytes, *, final: bool) -> list[tuple[str | None, str]]:
    """(name, data) of the events of `frame(buf, final=final)` that carry data, and only those
    (what the meter hands its parser), without cutting out each event's raw bytes."""
    pieces = buf.split(b"\n\n")
    tail = pieces.pop()  # after the last blank line: unfinished
    if final and tail:
        pieces.append(tail.rstrip(b"\n"))
    out: list[tuple[str | None, str]] = []
    for piece in pieces:
        if piece[:1] == b"\n":
            piece = piece.lstrip(b"\n")  # blank lines before it: events without data
        if piece.startswith(b"data: ") and b"\n" not in piece:
            if len(piece) > 6:
                out.append((None, piece[6:].decode("utf-8", "replace")))
            continue
        if not piece:
            continue
        event = _event(piece, piece)
        if event.data:
            out.append((event.name, event.data))
    return out


class LazyMeter(StreamMeter):
    """A `StreamMeter` for SSE that parses the events once, when the stream ends."""

    def __init__(self, parser: StreamParser, decoder: SSEDecoder, *, strip: bool = False) -> None:
        super().__init__(parser, decoder, strip=strip)
        self._drops = getattr(parser, "drops", None)
        self.lazy = not strip or self._drops is not None  # removing events needs the parser's own test
        self._chunks: list[bytes] = []
        self._kept = 0
        self._pending: list[bytes] = []  # the unfinished event's pieces (kept in both modes)
        self._tail = 0  # their length
        self._at_line_start = True  # the kept bytes end with a newline (or there are none)
        self._replayed = False
        self.batch_bytes = PARSE_BATCH_BYTES

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if not self.lazy:
            return super().__call__(data)
        if not data:
            return self._end()
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        if b"\r" in data or self._tail + len(data) > self.decoder.max_event_bytes // 2:
            return self._go_eager(data)
        last = data.rfind(b"\n\n")
        end = last + 2 if last >= 0 else (1 if data[:1] == b"\n" and self._at_line_start else 0)
        self._chunks.append(data)
        self._kept += len(data)
        self._at_line_start = data[-1] == 0x0A
        if end == 0:
            self._pending.append(data)
            self._tail += len(data)
            return [] if self.strip else data
        finished = data[:end]
        if self._pending:
            finished = b"".join(self._pending) + finished
        rest = data[end:]
        self._pending = [rest] if rest else []
        self._tail = len(rest)
        out = self._pass(finished, final=False) if self.strip else data
        if self._kept - self._tail > self.batch_bytes:
            self._parse_finished()
        return out

    def _parse_finished(self) -> None:
        """Parse the finished events kept so far; keep only the unfinished one's bytes."""
        kept = b"".join(self._chunks)
        self._chunks = list(self._pending)
        self._kept = self._tail
        self._parse(kept[:len(kept) - self._tail], final=False)

    def _pass(self, region: bytes, *, final: bool) -> list[bytes]:
        """Strip mode: the finished events of `region`, less those the parser drops."""
        if not any(marker in region for marker in _MARKERS):
            return [region] if region else []
        kept = [e.raw for e in frame(region, final=final) if not (e.data and self._drop(e.name, e.data))]
        return [b"".join(kept)] if kept else []

    def _drop(self, name: str | None, data: str) -> bool:
        try:
            return bool(self._drops(name, data))  # type: ignore[misc]
        except Exception:
            logger.exception("stream parser failed on one event; event passed on")
            return False

    def _end(self) -> bytes | list[bytes]:
        """The end of the body: strip mode passes on the unterminated last event now; then
        every event goes through the parser."""
        out: bytes | list[bytes] = self._pass(b"".join(self._pending), final=True) if self.strip else b""
        self._replay(final=True)
        self.finish()
        return out

    def _replay(self, *, final: bool) -> None:
        if self._replayed:
            return
        self._replayed = True
        data = b"".join(self._chunks)
        self._chunks, self._pending = [], []
        self._parse(data, final=final)

    def _parse(self, data: bytes, *, final: bool) -> None:
        """Hand the events of `data` (which starts at an event's start) to the parser."""
        if self.meter_error is not None:
            return
        try:
            events = data_events(data, final=final)
        except Exception as e:  # never let a framing bug cost the client anything
            logger.exception("stream meter failed; usage not metered")
            self.meter_error = f"meter error: {e!r}"
            return
        # one check of the whole batch instead of one per event
        self.parser.loads = loads_unguarded if no_long_numbers(data) else loads  # type: ignore[method-assign]
        on_event = self.parser.on_event
        try:
            for name, text in events:
                try:
                    on_event(name, text)
                except Exception:
                    logger.exception("stream parser failed on one event; event passed on")
        finally:
            self.parser.loads = loads  # type: ignore[method-assign]  # the eager meter may go on

    def _go_eager(self, data: bytes) -> bytes | list[bytes]:
        """Hand the stream to the eager meter: it sees the kept chunks first, then this one."""
        self.lazy = False
        chunks, self._chunks, self._pending = self._chunks, [], []
        self._replayed = True
        for chunk in chunks:
            super().__call__(chunk)  # passed on already (or held back, as the eager meter holds it)
        return super().__call__(data)

    def finish(self) -> None:
        """The call ended (also without the end of the body: only finished events count)."""
        if self.lazy and not self._replayed:
            self._replay(final=False)
        super().finish()


def meter_for(parser: StreamParser, content_type: str, *, strip: bool = False) -> StreamMeter:
    """The meter of a streamed response: lazy for SSE, eager for the other framings."""
    decoder = decoder_for(content_type)
    if isinstance(decoder, SSEDecoder):
        return LazyMeter(parser, decoder, strip=strip)
    return StreamMeter(parser, decoder, strip=strip)
