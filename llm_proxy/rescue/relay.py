"""The relay: a small HTTP server inside the addon that runs a call's attempts.

mitmproxy cannot retry: once it has a response it sends it, and a dead
upstream ends in its own 502. So a call that may need rescuing (retries, a
fallback chain, or another format) is sent by mitmproxy to this relay on
127.0.0.1 instead. The relay tries the targets in order with httpx and only
answers mitmproxy once an attempt has produced output (or every attempt has
failed), so the client gets the first success, streamed as it arrives,
translated to the shape it asked for, and never sees the failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config.models import Target
from ..config.providers import Provider, Providers
from ..errors import error_body, family
from ..redact import mask_url
from ..stream.framing import Event
from ..translate import (ChatToMessagesStream, MessagesToChatStream, chat_to_messages_response, error_to_chat,
                         error_to_messages, messages_to_chat_response)
from ..usage import json_usage
from ..usage.base import loads
from .attempts import Attempt, Failure, Reply, attempt
from .breaker import Breakers
from .plan import CHAT_TO_MESSAGES, MESSAGES_TO_CHAT, Plan, UpstreamRequest, backoff, build_request

logger = logging.getLogger(__name__)
# httpx logs every request URL at INFO: noise in mitmproxy's log, and a Gemini `key=` would leak.
logging.getLogger("httpx").setLevel(logging.WARNING)

MAX_RETRY_WAIT = 20.0  # a Retry-After longer than this moves on to the next target instead
_DROP_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                                    "content-encoding"})


@dataclass(slots=True)
class RelayJob:
    """Everything the relay needs for one call, registered by the request hook."""

    plan: Plan
    client_api: str
    requested_model: str | None
    primary: Provider
    primary_url: str  # where the request would have gone without the relay
    attempts: list[Attempt] = field(default_factory=list)
    served: Target | None = None
    upstream_url: str | None = None


class Relay:
    def __init__(self, providers: Callable[[], Providers], real_keys: Callable[[], dict[str, str]],
                 breakers: Breakers) -> None:
        self.providers = providers
        self.real_keys = real_keys
        self.breakers = breakers
        self.attempt_timeout = 60.0
        self.verify_tls = True
        self.jobs: dict[str, RelayJob] = {}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free loopback port. Synchronous (mitmproxy's `running` must be):
        the socket is bound here, so the port is known at once; serving starts on the loop."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._client = httpx.AsyncClient(
            trust_env=False, verify=self.verify_tls, follow_redirects=False,
            timeout=httpx.Timeout(connect=10.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._starting = asyncio.get_running_loop().create_task(self._listen(sock))

    async def _listen(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=1 << 24)

    @staticmethod
    def settle(job: RelayJob) -> None:
        """The client's side of a relayed call has ended: fix each attempt's usage for its row."""
        for attempt_record in job.attempts:
            attempt_record.settle()

    def url_for(self, token: str) -> str:
        return f"http://127.0.0.1:{self.port}/_relay/{token}"

    @property
    def running(self) -> bool:
        return self._client is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._client is not None:
            client, self._client = self._client, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no loop left at shutdown: the process is ending anyway
                pass

    # --- HTTP plumbing ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                path, headers, body = request
                job = self.jobs.get(path.rpartition("/")[2])
                if job is None:
                    await _respond(writer, 404, {"content-type": "text/plain"}, b"unknown relay job")
                    continue
                await self._run(job, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- the attempts -------------------------------------------------------------------

    async def _run(self, job: RelayJob, headers: dict[str, str], raw: bytes, writer: asyncio.StreamWriter) -> None:
        body = loads(raw)
        last: Failure | None = None
        for tried_all in (False, True):  # second pass: every breaker was open, try anyway
            for planned in job.plan.targets:
                # Breakers watch what is really called: the provider and the model sent to it.
                target = Target(planned.provider, planned.model or job.requested_model)
                if not tried_all and not self.breakers.allow(target, time.monotonic()):
                    job.attempts.append(Attempt(target.provider, target.model, error="circuit open: skipped"))
                    continue
                result = await self._try_target(job, target, headers, body, writer)
                if result is None:
                    return
                if last is None or result.unservable is None or last.unservable is not None:
                    last = result  # a real upstream failure outranks a target that could never serve
            if any(a.error != "circuit open: skipped" for a in job.attempts):
                break
        await self._answer_failure(job, last, writer)

    async def _try_target(self, job: RelayJob, target: Target, headers: dict[str, str], body: Any,
                          writer: asyncio.StreamWriter) -> Failure | None:
        """Run a target's tries; None once the client has its answer."""
        provider = self.providers().get(target.provider)
        if provider is None:
            job.attempts.append(Attempt(target.provider, target.model, error="unknown provider"))
            return Failure(False, f"provider {target.provider!r} is not in providers.toml", unservable=400)
        up = build_request(
            client_api=job.client_api, method="POST", path=httpx.URL(job.primary_url).path,
            query=dict(httpx.URL(job.primary_url).params), headers=headers, body=body, target=target, provider=provider,
            primary=job.primary, requested_model=job.requested_model, real_key=self.real_keys().get(provider.name),
        )
        if isinstance(up, str):
            job.attempts.append(Attempt(target.provider, target.model, error=up))
            return Failure(False, up, unservable=401 if up.startswith("no key") else 400)
        primary = job.plan.targets[0]
        if provider.name == job.primary.name == primary.provider and target.model == (
                primary.model or job.requested_model) and not primary.model:
            up = _replace_url(up, job.primary_url)  # the primary goes exactly where it was going
        failure: Failure | None = None
        for retry in range(job.plan.retries + 1):
            if retry:
                delay = backoff(retry - 1, failure.retry_after if failure else None)
                if delay > MAX_RETRY_WAIT:
                    break
                await asyncio.sleep(delay)
            started = time.monotonic()
            record = Attempt(target.provider, target.model)
            job.attempts.append(record)
            assert self._client is not None
            result = await attempt(self._client, up, started + self.attempt_timeout)
            record.duration_ms = round((time.monotonic() - started) * 1000)
            if isinstance(result, Reply):
                record.status = result.status
                try:
                    await self._hand_on(job, up, result, record, writer)
                finally:
                    # Judged once the answer is over: a provider that fails after its first output
                    # is too late to rescue this call, but the breaker must hear of it.
                    if record.error is not None and not record.client_gone:
                        self.breakers.failure(target, time.monotonic())
                    else:
                        self.breakers.success(target)
                return None
            record.status = result.reply.status if result.reply else None
            record.error = result.error
            if not result.retryable:  # the provider is up; the request is what it refuses
                self.breakers.success(target)
                await self._answer(job, up, result.reply, writer)
                return None
            self.breakers.failure(target, time.monotonic(), connection=result.connection)
            failure = result
            failure.reply = failure.reply and _translated_reply(up, failure.reply)
            if result.connection:
                break  # a dead host will not answer a retry either: next target
        return failure

    async def _hand_on(self, job: RelayJob, up: UpstreamRequest, reply: Reply, record: Attempt,
                       writer: asyncio.StreamWriter) -> None:
        job.served = up.target
        job.upstream_url = mask_url(up.url)
        if reply.response is None and not reply.held:
            record.usage, record.response_model = json_usage(up.api, loads(reply.body))
            await self._answer(job, up, reply, writer)
            return
        await _stream(job, up, reply, record, writer)

    async def _answer(self, job: RelayJob, up: UpstreamRequest, reply: Reply | None,
                      writer: asyncio.StreamWriter) -> None:
        if reply is None:
            await self._answer_failure(job, None, writer)
            return
        reply = _translated_reply(up, reply)
        await _respond(writer, reply.status, _response_headers(reply.headers, "application/json"), reply.body)

    async def _answer_failure(self, job: RelayJob, failure: Failure | None, writer: asyncio.StreamWriter) -> None:
        if failure is not None and failure.reply is not None:
            reply = failure.reply
            await _respond(writer, reply.status, _response_headers(reply.headers, "application/json"), reply.body)
            return
        reason = failure.error if failure else "no target could take the call"
        shape = family(job.client_api, job.primary.format)
        if failure is not None and failure.unservable is not None:
            # No target could ever take it (the request hook refuses most such calls up front):
            # the client's or the operator's error, which a retry would not mend.
            status, message = failure.unservable, f"llm-proxy cannot serve this call: {reason}"
        else:
            status = 504 if reason.startswith("timeout") else 502
            message = f"llm-proxy: every target failed; last: {reason}"
        body = json.dumps(error_body(shape, status, message)).encode()
        await _respond(writer, status, {"content-type": "application/json"}, body)


# --- streaming the chosen reply ---------------------------------------------------------------


def _translator(up: UpstreamRequest) -> MessagesToChatStream | ChatToMessagesStream | None:
    if up.translation == MESSAGES_TO_CHAT:
        return MessagesToChatStream(include_usage=True)  # mitmproxy's meter hides it if the client did not ask
    if up.translation == CHAT_TO_MESSAGES:
        return ChatToMessagesStream()
    return None


def _translate_events(translator: MessagesToChatStream | ChatToMessagesStream, events: list[Event]) -> bytes:
    out = bytearray()
    for event in events:
        if not event.data:
            continue
        data = event.data if event.data.startswith("[DONE]") else loads(event.data)
        if data is not None:
            out += translator.feed(event.name, data)
    return bytes(out)


async def _stream(job: RelayJob, up: UpstreamRequest, reply: Reply, record: Attempt,
                  writer: asyncio.StreamWriter) -> None:
    translator = _translator(up)
    content_type = "text/event-stream" if translator else reply.headers.get("content-type", "text/event-stream")
    headers = _response_headers(reply.headers, content_type)
    headers["transfer-encoding"] = "chunked"
    writer.write(_head(reply.status, headers))
    parser, decoder = reply.parser, reply.decoder
    assert parser is not None and decoder is not None

    async def send(chunk: bytes, events: list[Event]) -> None:
        data = _translate_events(translator, events) if translator else chunk
        if data:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

    record.live = parser
    try:
        for chunk, events in reply.held:
            await send(chunk, events)
        if reply.chunks is not None:
            async for chunk in reply.chunks:
                events = decoder.feed(chunk)
                _meter(parser, events)
                await send(chunk, events)
            events = decoder.flush()
            _meter(parser, events)
            await send(b"", events)
        if translator:
            tail = translator.finish()
            if tail:
                writer.write(b"%x\r\n%s\r\n" % (len(tail), tail))
    except ConnectionError as e:
        # Our writer to mitmproxy: the client went away. Not the provider's failure.
        record.client_gone = True
        if not getattr(parser, "complete", False):  # hanging up after the end marker loses nothing
            record.error = f"client gone: {type(e).__name__}: {e}".rstrip(": ")
        raise
    except httpx.HTTPError as e:
        record.error = f"stream ended early: {type(e).__name__}: {e}".rstrip(": ")
        raise ConnectionError(record.error) from e
    finally:
        record.live = None
        parser.finish()
        record.usage, record.response_model = parser.usage, parser.response_model
        if parser.error and not record.error:
            record.error = parser.error
        if reply.response is not None:
            await reply.response.aclose()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _meter(parser: Any, events: list[Event]) -> None:
    for event in events:
        if event.data:
            parser.on_event(event.name, event.data)


def _translated_reply(up: UpstreamRequest, reply: Reply) -> Reply:
    """A complete (JSON) reply in the client's shape."""
    if up.translation is None:
        return reply
    body = loads(reply.body)
    if reply.status >= 400:
        new = error_to_chat(body, reply.status) if up.translation == MESSAGES_TO_CHAT else error_to_messages(
            body, reply.status)
    elif isinstance(body, dict):
        new = messages_to_chat_response(body) if up.translation == MESSAGES_TO_CHAT else chat_to_messages_response(body)
    else:
        return reply
    return Reply(reply.status, reply.headers, json.dumps(new).encode())


def _replace_url(up: UpstreamRequest, url: str) -> UpstreamRequest:
    return UpstreamRequest(up.target, up.api, up.method, url, up.headers, up.body, up.translation)


def _response_headers(upstream: httpx.Headers, content_type: str) -> dict[str, str]:
    headers = {k.lower(): v for k, v in upstream.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
    headers["content-type"] = content_type
    return headers


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {httpx.codes.get_reason_phrase(status) or 'Status'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


async def _respond(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    writer.write(_head(status, {**headers, "content-length": str(len(body))}) + body)
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    _, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        headers.pop("transfer-encoding")
        return path, headers, bytes(body)
    return path, headers, await reader.readexactly(int(headers.get("content-length", 0)))

