"""Incremental decoders that cut a byte stream into events.

Network chunks do not follow event boundaries: a chunk may end inside a line,
inside a CRLF, or inside a multi-byte character. The decoders buffer only the
unfinished tail and hand out each complete event together with its exact raw
bytes, so that the meter can pass on, byte for byte, everything it does not
mean to remove. Every byte fed ends up in exactly one event's `raw`.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

MAX_EVENT_BYTES = 16 * 1024 * 1024

_EOL = re.compile(rb"\r\n|\r|\n")


class Event(NamedTuple):
    raw: bytes
    name: str | None
    data: str


class SSEDecoder:
    """Server-sent events (any of CRLF, LF, CR line ends; comments; multi-line data)."""

    corrupt: str | None = None  # text framings are never corrupt; see eventstream.py

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflowed = False  # an unfinished event outgrew the bound: stop parsing
        self._buf = bytearray()
        self._scan = 0  # offset in _buf up to which lines are already parsed
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf
        buf += chunk
        events: list[Event] = []
        start = 0
        pos = self._scan
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.end() == len(buf) and m.end() - m.start() == 1 and buf[m.start()] == 0x0D:
                break  # a lone CR at the very end may be the first half of CRLF
            line = buf[pos:m.start()]
            pos = m.end()
            if line:
                self._field(line)
            else:
                events.append(Event(bytes(buf[start:pos]), self._name, "\n".join(self._data)))
                start = pos
                self._name, self._data = None, []
        del buf[:start]
        self._scan = pos - start
        self.overflowed = len(buf) > self.max_event_bytes
        return events

    def flush(self) -> list[Event]:
        """End of stream: whatever is left (an unterminated last event) is one event."""
        if self._scan < len(self._buf):
            self._field(self._buf[self._scan:].rstrip(b"\r\n"))
        if not self._buf:
            return []
        event = Event(bytes(self._buf), self._name, "\n".join(self._data))
        self._buf.clear()
        self._scan, self._name, self._data = 0, None, []
        return [event]

    def take_pending(self) -> bytes:
        """Give up: return the buffered bytes so they can still reach the client."""
        pending = bytes(self._buf)
        self._buf.clear()
        self._scan, self._name, self._data = 0, None, []
        return pending

    def _field(self, line: bytes | bytearray) -> None:
        if not line or line[0] == 0x3A:  # ":" starts a comment (keep-alive)
            return
        colon = line.find(b":")
        name, value = (line, b"") if colon < 0 else (line[:colon], line[colon + 1:])
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._name = value.decode("utf-8", "replace")


class NDJSONDecoder:
    """Newline-delimited JSON (Ollama): one event per non-empty line."""

    corrupt: str | None = None  # text framings are never corrupt; see eventstream.py

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflowed = False  # an unfinished event outgrew the bound: stop parsing
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf
        buf += chunk
        end = buf.rfind(b"\n") + 1
        if not end:
            self.overflowed = len(buf) > self.max_event_bytes
            return []
        complete = bytes(buf[:end])
        del buf[:end]
        self.overflowed = len(buf) > self.max_event_bytes
        return [_line_event(line) for line in complete.splitlines(keepends=True)]

    def flush(self) -> list[Event]:
        return [_line_event(self.take_pending())] if self._buf else []

    def take_pending(self) -> bytes:
        pending = bytes(self._buf)
        self._buf.clear()
        return pending


def _line_event(raw: bytes) -> Event:
    return Event(raw, None, raw.strip().decode("utf-8", "replace"))


class JSONArrayDecoder:
    """A streamed JSON array (Gemini streamGenerateContent without alt=sse).

    Only the meter buffers it, up to the bound; the client still gets every
    chunk at once. The elements are cut out when the stream ends.
    """

    corrupt: str | None = None  # text framings are never corrupt; see eventstream.py

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflowed = False  # an unfinished event outgrew the bound: stop parsing
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Event]:
        self._buf += chunk
        self.overflowed = len(self._buf) > self.max_event_bytes
        return []

    def flush(self) -> list[Event]:
        raw = self.take_pending()
        text = raw.decode("utf-8", "replace")
        decoder = json.JSONDecoder()
        events, pos = [], 0
        while True:
            while pos < len(text) and text[pos] in "[,] \t\r\n":
                pos += 1
            if pos >= len(text):
                break
            try:
                _, end = decoder.raw_decode(text, pos)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse: stop cutting
                break
            events.append(Event(b"", None, text[pos:end]))
            pos = end
        if events:  # keep the invariant: the raw bytes ride on one event
            events[0] = events[0]._replace(raw=raw)
        elif raw:
            events.append(Event(raw, None, ""))
        return events

    def take_pending(self) -> bytes:
        pending = bytes(self._buf)
        self._buf.clear()
        return pending
