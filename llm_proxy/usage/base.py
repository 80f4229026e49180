"""What every stream parser shares: the contract the stream meter relies on."""

from __future__ import annotations

import json
from typing import Any

import orjson

from .model import Usage

MAX_KEPT_EVENTS = 200
MAX_KEPT_EVENT_BYTES = 256 * 1024


# digits -> "0", everything else -> " ": a run of 19 zeros is a number orjson would read as a float
_DIGITS = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_LONG_NUMBER = b"0" * 19


def loads(data: str | bytes | None) -> Any:
    """Parse JSON text (an event's data, a body); None when it is empty or not JSON.

    Never raises, whatever the bytes: invalid UTF-8 (UnicodeDecodeError is a
    ValueError) and nesting deeper than the interpreter's C recursion bound
    (a 100,000-deep `[[[...` raises RecursionError) are both "not JSON", so a
    hostile body costs neither the call nor its row. Lone surrogate escapes
    (`"\\ud800"`) are valid JSON and come back as str; callers that store
    or log a string from here pass it through `model.text`.

    orjson parses first (several times faster); whatever it refuses (NaN,
    lone surrogates, a byte order mark, UTF-16, nesting past 1024) and any
    text with a number of 19 digits or more (orjson reads integers past 64
    bits as floats) is parsed by `json`, so the result is always json's.
    """
    if not data:
        return None
    try:
        raw = data.encode() if isinstance(data, str) else data
        if _LONG_NUMBER not in raw.translate(_DIGITS):
            return orjson.loads(raw)
    except (ValueError, TypeError, AttributeError):  # JSONDecodeError is a ValueError, so is a lone surrogate
        pass
    return std_loads(data)


def loads_unguarded(data: str | bytes) -> Any:
    """`loads` for text already known to hold no number of 19 digits or more (`no_long_numbers`):
    orjson, and json only for what orjson refuses."""
    try:
        return orjson.loads(data)
    except (ValueError, TypeError):
        return std_loads(data)


def no_long_numbers(raw: bytes) -> bool:
    """No run of 19 digits in `raw`: orjson reads every number in it as json does."""
    return _LONG_NUMBER not in raw.translate(_DIGITS)


def std_loads(data: str | bytes | None) -> Any:
    """`loads` with the standard library only (the reference the fast path must agree with)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def event_index(obj: dict[str, Any], default: int) -> int:
    """An event's `index`: a missing or non-integer one (a list could not even key a dict) is `default`."""
    index = obj.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else default


def append_text(target: dict[str, Any], key: str, piece: Any) -> None:
    """Append a streamed string piece; a non-string piece, or a non-string so far, is not text to join."""
    if isinstance(piece, str):
        previous = target.get(key)
        target[key] = (previous if isinstance(previous, str) else "") + piece


class StreamParser:
    """Consumes the decoded events of one streamed response.

    `on_event` returns False only for an event the proxy itself caused and the
    client must not see (the usage chunk of an injected `include_usage`).
    Parsers must never raise, whatever an event holds (a list where an index
    belongs, a number where text belongs, NaN counts): the meter catches
    exceptions, but the relay (rescue/) feeds parsers directly, and a parser
    that raises loses the rest of the call's usage either way.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        # The stream reached its format's end marker ([DONE], message_stop, a terminal
        # response event, Ollama's done): a connection closed after it lost nothing.
        self.complete = False
        self.error: str | None = None
        self.response_model: str | None = None
        self._events: list[Any] = []
        self._kept_bytes = 0
        self._dropped_events = 0

    # How on_event parses an event: `loads`; the lazy meter swaps in `loads_unguarded` when the
    # whole stream holds no long number (one check of the stream instead of one per event).
    loads = staticmethod(loads)

    def on_event(self, name: str | None, data: str) -> bool:
        raise NotImplementedError

    def finish(self) -> None:
        """The stream ended (normally or not); complete whatever is pending."""

    def body(self) -> Any:
        """What to store as response_body: the final object where one can be rebuilt."""
        return self.events_body()

    def keep_event(self, name: str | None, obj: Any, size: int) -> None:
        """Remember an event for the stored body, within a count and byte bound."""
        if len(self._events) >= MAX_KEPT_EVENTS or self._kept_bytes + size > MAX_KEPT_EVENT_BYTES:
            self._dropped_events += 1
            return
        self._kept_bytes += size
        self._events.append({"event": name, "data": obj} if name else obj)

    def events_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"stream_events": self._events}
        if self._dropped_events:
            body["dropped_events"] = self._dropped_events
        return body
