"""The row of one WebSocket turn, and the error event a refused one gets.

A turn's row has the same columns as an HTTP call's (calls.close_call), read
from the turn instead of a request/response pair: `method` is "WS", `ts` is
when its response.create passed, `ttft_ms` runs to the first server event,
`duration_ms` to the terminal event (or to the socket's end).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from ..calls import Call, token_columns
from ..errors import error_body
from ..record import Record
from ..usage import Usage
from .turns import Turn

METHOD = "WS"  # the method column of a WebSocket turn: it has no HTTP request of its own


@dataclass(slots=True)
class Socket:
    """What a turn's row needs from its socket, read once at the upgrade."""

    flow_id: str
    path: str  # as the client asked for it, secrets masked
    upstream_url: str | None  # ws(s)://..., secrets masked
    client_addr: str | None


def error_event(status: int, message: str, code: str | None) -> bytes:
    """The Responses WebSocket API's `error` event, as the proxy's own answer to one response.create.

    Same shape as the API's (`ResponseWsError`): the HTTP status the call would
    have had over HTTP, and the OpenAI error object.
    """
    return json.dumps({"type": "error", "status": status, **error_body("openai", status, message, code)}).encode()


def turn_record(socket: Socket, turn: Turn, *, log_bodies: bool, interrupted: str | None = None) -> tuple[Record, Usage]:
    """The row of a turn that ended (terminal event), or that the socket's end cut short."""
    call: Call = turn.call
    parser = turn.parser
    usage = parser.usage
    error = parser.error
    status: int | None
    if turn.terminal == "error":
        status = turn.error_status
        error = f"HTTP {status}: {error}" if status and error else error or "error event"
    elif turn.terminal is not None:
        status = 200
    else:
        status = None
    if interrupted:
        error = f"{error}; {interrupted}" if error else interrupted
    ended = turn.ended_at
    record = Record(
        request_id=f"{socket.flow_id}.{turn.number}",
        ts=datetime.fromtimestamp(turn.started, UTC),
        duration_ms=_ms(ended - turn.started) if ended is not None else None,
        ttft_ms=_ms(turn.first_event_at - turn.started) if turn.first_event_at is not None else None,
        provider=call.route.provider.name,
        api=call.route.api,
        method=METHOD,
        path=socket.path,
        upstream_url=socket.upstream_url,
        model=parser.response_model if turn.successor else call.model,  # a successor inherits its model
        response_model=parser.response_model,
        key_id=call.key_id,
        streaming=True,
        status=status,
        error=error,
        **token_columns(usage),
        request_body=call.request_body if log_bodies else None,
        response_body=parser.body() if log_bodies and turn.events else None,
        client_addr=socket.client_addr,
    )
    return record, usage


def refused_record(socket: Socket, turn: Turn, status: int, message: str, *, log_bodies: bool) -> Record:
    """The row of a response.create the proxy answered itself (never sent upstream, costs nothing)."""
    call: Call = turn.call
    return Record(**_identity(socket, turn), duration_ms=0, status=status,
                  error=f"llm-proxy answered HTTP {status}: {message}",
                  request_body=call.request_body if log_bodies else None)


def bare_record(socket: Socket, turn: Turn, reason: str) -> Record:
    """The row of a turn whose answer could not be read: who, when, where, and why it is bare."""
    return Record(**_identity(socket, turn), error=reason)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _identity(socket: Socket, turn: Turn) -> dict[str, object]:
    """Who, when and where: the columns every row of a turn has, whatever its end."""
    call: Call = turn.call
    return {"request_id": f"{socket.flow_id}.{turn.number}", "ts": datetime.fromtimestamp(turn.started, UTC),
            "provider": call.route.provider.name, "api": call.route.api, "method": METHOD, "path": socket.path,
            "model": call.model, "key_id": call.key_id, "streaming": True, "client_addr": socket.client_addr}
