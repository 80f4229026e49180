"""Pairing the messages of one Responses WebSocket into calls ("turns"), as plain functions.

In WebSocket mode a client sends `response.create` messages and the server
answers each with the usual Responses streaming events, ending in one terminal
event (`response.completed`, `response.incomplete`, `response.failed`, or an
`error` event). Responses on one socket run one at a time, in order; a
`response.create` that names a `stream_id` (a "lane") gets events that echo it.
So a server event belongs to the oldest pending turn of its lane, or to the
oldest pending turn at all when it names none.

Nothing here knows mitmproxy: the addon hands in message bytes and times and
gets back what to do, so every rule is testable with plain values. Nothing
here raises on what a client or server sends, whatever it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..limits.estimate import max_output
from ..usage.base import loads
from ..usage.model import text
from ..usage.openai import ResponsesStream

CREATE = "response.create"
CREATED = "response.created"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
# Messages bigger than this are not parsed on the event loop (json.loads of it would stall
# every flow). A client message that big is refused (it cannot be metered, and the
# API's own limit is far lower); a server event that big is passed on unread.
MAX_PARSED_BYTES = 16 << 20
# Turns a socket may have waiting for their answers; the API runs one at a time, so
# more than a few means a client that never reads, not a real workload.
MAX_PENDING = 64


@dataclass(slots=True)
class ClientMessage:
    """What a client message is, as far as metering cares."""

    create: bool  # a response.create: one call, admitted and metered
    model: str | None = None
    stream_id: str | None = None
    too_large: bool = False  # a message we refuse to read (see MAX_PARSED_BYTES)
    max_output: int | None = None  # max_output_tokens it allows: its tpm and budget estimate


def read_client_message(content: bytes) -> ClientMessage:
    """Classify a client message (text or binary: a server may accept JSON in either).

    Only a JSON object whose `type` is `response.create` is a call. Anything else
    (other client events, garbage) goes on untouched: the provider answers it.
    """
    if len(content) > MAX_PARSED_BYTES:
        # Unread, it could be a create anywhere in it: refused like one, so size is no way past metering.
        return ClientMessage(create=True, too_large=True)
    obj = loads(content)
    if not isinstance(obj, dict) or obj.get("type") != CREATE:
        return ClientMessage(create=False)
    model = obj.get("model")
    nested = obj.get("response")
    if model is None and isinstance(nested, dict):
        model = nested.get("model")  # an envelope that nests the create body instead of flattening it
    stream_id = obj.get("stream_id")
    return ClientMessage(
        create=True,
        model=text(model) if isinstance(model, str) else None,
        stream_id=stream_id if isinstance(stream_id, str) else None,
        max_output=max_output(nested if isinstance(nested, dict) else obj),
    )


@dataclass(slots=True)
class Turn:
    """One response.create and the events answering it."""

    number: int  # 1, 2, ... on its socket: the row's request_id suffix
    started: float  # when the response.create passed through the proxy
    call: Any  # the Call the metering side opened for it (opaque here)
    stream_id: str | None = None
    parser: ResponsesStream = field(default_factory=ResponsesStream)
    first_event_at: float | None = None
    ended_at: float | None = None
    terminal: str | None = None  # the type of the event that ended it
    error_status: int | None = None  # the `status` of an `error` event
    events: int = 0
    unread_events: int = 0  # server messages too big or not JSON: passed on, not parsed
    successor: bool = False  # started by the server itself, with no response.create of its own


class Pairing:
    """The pending turns of one socket, and the rule that pairs server events with them.

    `successor` makes the turn of a response the server starts by itself: after a
    `response.steer`, or after a completion, the API may go on with an automatic
    successor (`response.created` with no response.create pending). It is billed,
    so it is a call too.
    """

    def __init__(self, successor: Callable[[float], Turn] | None = None) -> None:
        self.pending: deque[Turn] = deque()
        self.count = 0  # turns opened on this socket, refused ones included
        self.successor = successor

    def next_number(self) -> int:
        self.count += 1
        return self.count

    def open(self, turn: Turn) -> None:
        self.pending.append(turn)

    def full(self) -> bool:
        return len(self.pending) >= MAX_PENDING

    def server_message(self, content: bytes, now: float) -> Turn | None:
        """Feed one server message to its turn; the turn if this message ended it."""
        if not self.pending and self.successor is None:
            return None
        obj = loads(content) if len(content) <= MAX_PARSED_BYTES else None
        if not self.pending:
            if not isinstance(obj, dict) or obj.get("type") != CREATED:
                return None  # between calls, and not a response starting: nothing to meter
            started = self.successor(now)
            started.successor = True
            started.stream_id = obj.get("stream_id") if isinstance(obj.get("stream_id"), str) else None
            self.pending.append(started)
        turn = self._owner(obj)
        if turn.first_event_at is None:
            turn.first_event_at = now
        turn.events += 1
        if not isinstance(obj, dict):
            turn.unread_events += 1
            return None
        try:
            turn.parser.on_object(None, obj, len(content))
        except Exception:  # a parser must not raise; if one does, the turn loses usage, not the socket
            turn.unread_events += 1
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in TERMINAL:
            return None
        turn.terminal = kind
        turn.ended_at = now
        if kind == "error":
            status = obj.get("status")
            turn.error_status = status if isinstance(status, int) and not isinstance(status, bool) \
                and 100 <= status <= 599 else None
        self.pending.remove(turn)
        return turn

    def _owner(self, obj: Any) -> Turn:
        lane = obj.get("stream_id") if isinstance(obj, dict) else None
        if isinstance(lane, str):
            for turn in self.pending:
                if turn.stream_id == lane:
                    return turn
        return self.pending[0]

    def close(self) -> list[Turn]:
        """The socket ended: every turn still pending, in order (each is interrupted)."""
        left = list(self.pending)
        self.pending.clear()
        return left
