"""AWS event-stream framing (`application/vnd.amazon.eventstream`), decoded incrementally.

Bedrock's ConverseStream and InvokeModelWithResponseStream answer in binary
frames, not text lines:

    total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (u32 BE)
    headers | payload | message CRC32 (u32 BE, of every byte before it)

and each header is `name length (u8) | name | value type (u8) | value`, the
value's size given by its type (strings and byte arrays carry a u16 length).
`:message-type` says "event" (`:event-type` names it), "exception"
(`:exception-type`) or "error" (`:error-code`, `:error-message`).

Network chunks split frames anywhere, so only the unfinished tail is kept.
The bytes come from the network: a frame whose lengths cannot be true or
whose CRC does not match means the stream is not what it claims to be, and
the decoder stops reading it for good (`corrupt` says why) instead of guessing
where the next frame starts. It never raises; the meter then reports the
call's usage as unknown rather than half of it.
"""

from __future__ import annotations

import struct
import zlib

from .framing import MAX_EVENT_BYTES, Event

CONTENT_TYPE = "application/vnd.amazon.eventstream"
PRELUDE = 12  # total length, headers length, prelude CRC
OVERHEAD = 16  # the prelude and the message CRC

_U32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">III")
# Value sizes of the fixed-size header types: bool true, bool false, byte, short, int, long,
# (6 byte array and 7 string are length-prefixed), timestamp, uuid.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_BYTES, _STRING = 6, 7


class Corrupt(ValueError):
    """The bytes are not a well-formed event-stream message."""


def parse_headers(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """A frame's headers; string values decoded, other types kept only as present (""). Raises Corrupt."""
    headers: dict[str, str] = {}
    pos, end = 0, len(data)
    while pos < end:
        size = data[pos]
        pos += 1
        if size == 0 or pos + size + 1 > end:
            raise Corrupt("header name runs past the headers")
        name = bytes(data[pos:pos + size]).decode("utf-8", "replace")
        pos += size
        kind = data[pos]
        pos += 1
        if kind in _FIXED:
            length = _FIXED[kind]
            value = ""
        elif kind in (_BYTES, _STRING):
            if pos + 2 > end:
                raise Corrupt("header value length runs past the headers")
            length = (data[pos] << 8) | data[pos + 1]
            pos += 2
            value = bytes(data[pos:pos + length]).decode("utf-8", "replace") if kind == _STRING else ""
        else:
            raise Corrupt(f"unknown header value type {kind}")
        if pos + length > end:
            raise Corrupt("header value runs past the headers")
        pos += length
        headers[name] = value
    return headers


def event_of(raw: bytes, headers: dict[str, str], payload: bytes) -> Event:
    """The meter's Event for one frame: named by its event type, `exception:<type>` or `error:<code>`."""
    kind = headers.get(":message-type", "event")
    data = payload.decode("utf-8", "replace")
    if kind == "exception":
        name = f"exception:{headers.get(':exception-type', '')}"
    elif kind == "error":
        name = f"error:{headers.get(':error-code', '')}"
        data = data or headers.get(":error-message", "") or name  # errors carry their message in headers
    else:
        name = headers.get(":event-type") or None
    return Event(raw, name, data)


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame with string headers (for the fake upstream and the tests)."""
    block = b"".join(
        bytes([len(n := name.encode())]) + n + bytes([_STRING]) + len(v := value.encode()).to_bytes(2, "big") + v
        for name, value in headers.items()
    )
    total = OVERHEAD + len(block) + len(payload)
    prelude = _U32.pack(total) + _U32.pack(len(block))
    head = prelude + _U32.pack(zlib.crc32(prelude)) + block + payload
    return head + _U32.pack(zlib.crc32(head))


class EventStreamDecoder:
    """Cuts event-stream frames out of chunks split anywhere; the meter's decoder interface."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.overflowed = False  # frames are bounded by their stated length: never set
        self.corrupt: str | None = None  # why the stream stopped being readable
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Event]:
        if self.corrupt is not None:
            return []
        buf = self._buf
        buf += chunk
        events: list[Event] = []
        pos = 0
        try:
            while len(buf) - pos >= PRELUDE:
                total, headers_length, prelude_crc = _PRELUDE.unpack_from(buf, pos)
                if zlib.crc32(memoryview(buf)[pos:pos + 8]) != prelude_crc:
                    raise Corrupt("prelude CRC mismatch")
                if total < OVERHEAD or headers_length > total - OVERHEAD or total > self.max_event_bytes:
                    raise Corrupt(f"impossible lengths (total {total}, headers {headers_length})")
                if len(buf) - pos < total:
                    break
                frame = bytes(buf[pos:pos + total])
                if zlib.crc32(frame[:-4]) != _U32.unpack_from(frame, total - 4)[0]:
                    raise Corrupt("message CRC mismatch")
                headers = parse_headers(memoryview(frame)[PRELUDE:PRELUDE + headers_length])
                events.append(event_of(frame, headers, frame[PRELUDE + headers_length:-4]))
                pos += total
        except Corrupt as e:
            self.corrupt = f"not a valid AWS event stream: {e}"
        del buf[:pos]
        return events

    def flush(self) -> list[Event]:
        """End of body: an unfinished frame is a truncated stream, not an event."""
        return []

    def take_pending(self) -> bytes:
        pending = bytes(self._buf)
        self._buf.clear()
        return pending
