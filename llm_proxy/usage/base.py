"""What every stream parser shares: the contract the stream meter relies on."""

from __future__ import annotations

import json
from typing import Any

from .model import Usage

MAX_KEPT_EVENTS = 200
MAX_KEPT_EVENT_BYTES = 256 * 1024


def loads(data: str | bytes | None) -> Any:
    """Parse JSON text (an event's data, a body); None when it is empty or not JSON."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


class StreamParser:
    """Consumes the decoded events of one streamed response.

    `on_event` returns False only for an event the proxy itself caused and the
    client must not see (the usage chunk of an injected `include_usage`).
    Parsers must tolerate any input: the meter catches exceptions, but a parser
    that raises loses the rest of the call's usage.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self.error: str | None = None
        self.response_model: str | None = None
        self._events: list[Any] = []
        self._kept_bytes = 0
        self._dropped_events = 0

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
