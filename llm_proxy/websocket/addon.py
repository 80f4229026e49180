"""Meters the Responses API over WebSocket ("WebSocket mode"), through mitmproxy's websocket hooks.

A client (Codex, `client.responses.connect()`) opens `GET /v1/responses` with
an upgrade and sends `response.create` messages; the server answers each with
the Responses streaming events. Each response.create up to its terminal event
is one call and one row, with the same key checks, limits and budgets as an
HTTP call: a refused one is not forwarded, and the client gets the API's own
`error` event on the still-open socket.

Every message goes on as it arrives: a server event is parsed once (to pair
it with its turn and read usage from the terminal one), a client message is
held only while its response.create is admitted, as an HTTP request is. A
failure here costs a row, never the socket.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from .. import apis
from ..calls import Call, comment
from ..errors import local_response
from ..failures import FailureLog
from ..limits.limiter import Refusal
from ..record import Record
from ..redact import mask_url
from ..routing import Route
from .records import Socket, bare_record, error_event, refused_record, turn_record
from .turns import Pairing, Turn, read_client_message
from .upgrade import CLAIMED, Credential, admit_socket, is_upgrade, ws_url

if TYPE_CHECKING:
    from ..addon import LLMProxy

logger = logging.getLogger(__name__)
failures = FailureLog(logger)

STOPPED = "interrupted: llm-proxy stopped before the response ended (the provider may have billed it)"


@dataclass(slots=True)
class Session:
    """One metered socket: who opened it, where it goes, and its turns."""

    route: Route
    credential: Credential
    socket: Socket
    pairing: Pairing


class ResponsesWebSocket:
    """The WebSocket side of metering; rows and admission go through the metering addon."""

    def __init__(self, metering: LLMProxy) -> None:
        self.metering = metering
        self._sessions: weakref.WeakKeyDictionary[http.HTTPFlow, Session] = weakref.WeakKeyDictionary()

    # --- the upgrade ------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        """Before the metering addon, which leaves every upgrade to this one."""
        if flow.response or flow.error or not flow.live or not is_upgrade(flow.request):
            return
        route = self.metering.route_of(flow)
        if route is None:
            return  # not a provider's: passed on as it is (or refused by llm_only_providers)
        request = flow.request
        path = mask_url(request.path)
        try:
            credential, refusal = admit_socket(self.metering.access, request, route)
        except Exception as e:
            failures.failed("llm-proxy could not check a WebSocket upgrade", e, context=path)
            credential, refusal = Credential(None, None), Refusal(
                500, "llm-proxy could not handle this call; its log says why", "internal_error")
        flow.metadata[CLAIMED] = True
        if refusal is not None:
            logger.info("llm-proxy refused a WebSocket upgrade to %s: %s", path, refusal.message)
            flow.response = local_response(route.api, route.provider.format, refusal.status, refusal.message,
                                           code=refusal.code, headers=refusal.headers)
            return
        if route.upstream_url is not None:
            request.url = route.upstream_url
        if route.api != apis.OPENAI_RESPONSES:
            return  # another WebSocket API (Realtime, ...): its key is checked, its messages not metered
        peer = flow.client_conn.peername
        socket = Socket(flow.id, path, None, peer[0] if peer else None)
        session = Session(route, credential, socket, Pairing())
        session.pairing.successor = lambda now: self._successor(session, now)
        self._sessions[flow] = session

    @staticmethod
    def _successor(session: Session, now: float) -> Turn:
        """The turn of a response the server started by itself (metered; nothing to admit or refuse)."""
        call = Call(route=session.route, model=None, streaming=True, strip_usage_chunk=False, request_body=None,
                    key_id=session.credential.key_id, path=session.socket.path,
                    key_hash=session.credential.key_hash)
        return Turn(number=session.pairing.next_number(), started=now, call=call)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        session = self._sessions.get(flow)
        if session is not None:
            session.socket.upstream_url = mask_url(ws_url(flow.request.url))

    # --- messages ---------------------------------------------------------------------

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        session = self._sessions.get(flow)
        if session is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if message.injected:
            return  # our own error events (and anything another addon injects) are not calls
        now = time.time()
        if message.from_client:
            await self._client_message(flow, session, message, now)
            return
        try:
            turn = session.pairing.server_message(message.content, now)
        except Exception as e:
            failures.failed("llm-proxy could not read a WebSocket event", e, context=session.socket.path)
            return
        if turn is not None:
            self._finish(flow, session, turn)

    async def _client_message(self, flow: http.HTTPFlow, session: Session, message: WebSocketMessage,
                              now: float) -> None:
        try:
            info = read_client_message(message.content)
        except Exception as e:  # read_client_message does not raise; if it ever does, the message goes on
            failures.failed("llm-proxy could not read a WebSocket message", e, context=session.socket.path)
            return
        if not info.create:
            return  # other client events (response.steer, ...) are the provider's to answer
        route, credential = session.route, session.credential
        body = {"unread_bytes": len(message.content)} if info.too_large else message.content
        call = Call(route=route, model=info.model, streaming=True, strip_usage_chunk=False, request_body=body,
                    key_id=credential.key_id, path=session.socket.path, key_hash=credential.key_hash,
                    max_output=info.max_output)
        turn = Turn(number=session.pairing.next_number(), started=now, call=call, stream_id=info.stream_id)
        access = self.metering.access
        refusal: Refusal | None
        if info.too_large:
            refusal = Refusal(413, "response.create is too large for llm-proxy to meter", "message_too_large")
        elif session.pairing.full():
            refusal = Refusal(429, "too many response.create messages waiting for their answers on this socket",
                              "too_many_pending")
        else:
            try:
                refusal = await access.admit(flow, call)
            except Exception as e:
                # Fail closed, as for HTTP: a call the proxy could not check must not go upstream unchecked.
                failures.failed("llm-proxy could not handle a call", e, context=session.socket.path)
                refusal = Refusal(500, "llm-proxy could not handle this call; its log says why", "internal_error")
        if refusal is None:
            session.pairing.open(turn)
            return
        message.drop()
        self._answer(flow, refusal)
        try:
            record = refused_record(session.socket, turn, refusal.status, refusal.message,
                                    log_bodies=self.metering.log_bodies)
            record.cost_usd = Decimal(0)
            flow.comment = comment(record)
        except Exception as e:
            failures.failed("llm-proxy could not build the row of a call", e, context=session.socket.path)
            record = bare_record(session.socket, turn, f"llm-proxy answered HTTP {refusal.status}; "
                                                       f"its row could not be built ({type(e).__name__})")
        self._deliver(call, record)

    @staticmethod
    def _answer(flow: http.HTTPFlow, refusal: Refusal) -> None:
        """Send the client the API's error event for its refused response.create."""
        payload = error_event(refusal.status, refusal.message, refusal.code)
        try:
            ctx.master.commands.call("inject.websocket", flow, True, payload, True)
        except Exception as e:
            failures.failed("llm-proxy could not answer a refused response.create", e)

    # --- the end ----------------------------------------------------------------------

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        session = self._sessions.pop(flow, None)
        if session is None:
            return
        ws = flow.websocket
        ended = (ws.timestamp_end if ws is not None and ws.timestamp_end else None) or time.time()
        by = "client" if ws is not None and ws.closed_by_client else "server"
        code = ws.close_code if ws is not None else None
        reason = f"interrupted: the WebSocket was closed by the {by} (code {code}) before the response ended"
        for turn in session.pairing.close():
            turn.ended_at = ended
            self._finish(flow, session, turn, interrupted=reason)

    def done(self) -> None:
        """Before the metering addon's done (which stops the writer): open turns get their rows."""
        now = time.time()
        for flow in list(self._sessions):
            session = self._sessions.pop(flow, None)
            if session is None:
                continue
            for turn in session.pairing.close():
                turn.ended_at = now
                self._finish(flow, session, turn, interrupted=STOPPED)

    def _finish(self, flow: http.HTTPFlow, session: Session, turn: Turn, *, interrupted: str | None = None) -> None:
        metering = self.metering
        try:
            record, usage = turn_record(session.socket, turn, log_bodies=metering.log_bodies, interrupted=interrupted)
            record.cost_usd = metering.pricer.call(record, usage)
            flow.comment = comment(record)
        except Exception as e:
            failures.failed("llm-proxy could not build the row of a call", e, context=session.socket.path)
            record = bare_record(session.socket, turn, f"llm-proxy could not read this call's answer "
                                                       f"({type(e).__name__}); tokens and cost unknown")
        self._deliver(turn.call, record)

    def _deliver(self, call: Call, record: Record) -> None:
        try:
            self.metering.deliver(call, record)
        except Exception as e:  # a hook must not raise into mitmproxy: the socket goes on, the row is lost
            failures.failed("llm-proxy could not hand on the row of a call", e, context=record.path or "")
