"""One attempt at one target: send, and judge what comes back before the client sees any of it.

A failed attempt is one that ends with a retryable status, a timeout, a
dropped connection, or an error event before the first event that carries
output. Up to that point nothing has been passed on, so the call can still go
elsewhere; after it, the stream is the client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .. import apis
from ..stream.framing import Event
from ..stream.meter import Decoder, decoder_for
from ..usage import StreamParser, Usage, error_text, stream_parser
from ..usage.base import loads
from .plan import RETRYABLE, UpstreamRequest, retry_after

MAX_HELD_EVENTS = 64
MAX_ERROR_BODY = 64 * 1024
_STREAM_TYPES = ("text/event-stream", "ndjson", "jsonl")
_PREAMBLE = frozenset({"message_start", "ping", "response.created", "response.in_progress"})


@dataclass(slots=True)
class Attempt:
    """What the row's `attempts` column says about one try."""

    provider: str
    model: str | None
    status: int | None = None
    duration_ms: int = 0
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    response_model: str | None = None
    # The parser of a stream still being relayed: its usage counts even if the client's side
    # ends first (an SDK hangs up on reading [DONE], before the relay has closed the stream).
    live: StreamParser | None = None
    client_gone: bool = False  # the client hung up: not the provider's failure

    def settle(self) -> None:
        """Take a live stream's usage as it stands now (the row is being made)."""
        if self.live is not None and not self.usage.known:
            self.usage, self.response_model = self.live.usage, self.live.response_model

    def to_json(self, cost: Any = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "provider": self.provider, "model": self.model, "status": self.status,
            "duration_ms": self.duration_ms, "error": self.error,
        }
        if self.usage.known:
            entry.update(input_tokens=self.usage.input_tokens, output_tokens=self.usage.output_tokens,
                         cost_usd=None if cost is None else str(cost))
        return entry


@dataclass(slots=True)
class Reply:
    """An upstream answer the relay can hand on: a complete body, or a stream in progress."""

    status: int
    headers: httpx.Headers
    body: bytes = b""
    response: httpx.Response | None = None  # open stream: the rest comes from `chunks`
    chunks: AsyncIterator[bytes] | None = None
    held: list[tuple[bytes, list[Event]]] = field(default_factory=list)
    decoder: Decoder | None = None
    parser: StreamParser | None = None


@dataclass(slots=True)
class Failure:
    retryable: bool
    error: str
    reply: Reply | None = None  # the HTTP answer, when there was one
    connection: bool = False
    retry_after: float | None = None
    unservable: int | None = None  # the configuration can never serve it: the 400/401 to answer


def carries_output(api: str, name: str | None, obj: Any) -> bool:
    """Whether an event is generated output (after which a stream can no longer be redone)."""
    if not isinstance(obj, dict):
        return False
    kind = obj.get("type") or name
    if kind in _PREAMBLE or "error" in obj and kind != "message_delta":
        return False
    if api in (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS):
        if obj.get("usage"):
            return True
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("finish_reason") or choice.get("text") or any(
                delta.get(k) for k in ("content", "tool_calls", "refusal", "reasoning_content", "function_call")
            ):
                return True
        return False
    if api == apis.GEMINI_GENERATE:
        return "candidates" in obj
    if api in (apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE):
        return bool(obj.get("done") or (obj.get("message") or {}).get("content") or obj.get("response"))
    return True  # Anthropic and Responses: anything past the preamble


async def attempt(client: httpx.AsyncClient, up: UpstreamRequest, deadline: float) -> Reply | Failure:
    """Send `up`; return a Reply to hand on, or a Failure to judge. Never raises for network trouble."""
    try:
        return await asyncio.wait_for(_attempt(client, up), max(0.001, deadline - time.monotonic()))
    except TimeoutError:
        return Failure(True, "timeout: no output in time")
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        return Failure(True, f"connection failed: {e or type(e).__name__}", connection=True)
    except httpx.HTTPError as e:
        return Failure(True, f"{type(e).__name__}: {e}".rstrip(": "))


async def _attempt(client: httpx.AsyncClient, up: UpstreamRequest) -> Reply | Failure:
    request = client.build_request(up.method, up.url, headers=up.headers, content=up.body)
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            body = await _read_bounded(response)
            text = error_text(loads(body)) or response.reason_phrase
            should_retry = response.headers.get("x-should-retry")
            retryable = should_retry == "true" or (should_retry != "false" and response.status_code in RETRYABLE)
            return Failure(retryable, f"HTTP {response.status_code}: {text}",
                           Reply(response.status_code, response.headers, body), retry_after=retry_after(response.headers))
        content_type = response.headers.get("content-type", "")
        if not any(t in content_type for t in _STREAM_TYPES):
            return Reply(response.status_code, response.headers, await response.aread())
        return await _prefetch(up, response, content_type)
    except BaseException:
        await response.aclose()
        raise


async def _prefetch(up: UpstreamRequest, response: httpx.Response, content_type: str) -> Reply | Failure:
    """Read a stream up to its first output event, holding every byte back."""
    decoder = decoder_for(content_type)
    parser = stream_parser(up.api) or StreamParser()
    reply = Reply(response.status_code, response.headers, response=response, decoder=decoder, parser=parser)
    held_events = 0
    chunks = reply.chunks = response.aiter_raw()
    while True:
        chunk = await anext(chunks, b"")
        events = decoder.feed(chunk) if chunk else decoder.flush()
        reply.held.append((chunk, events))
        for event in events:
            if not event.data:
                continue
            parser.on_event(event.name, event.data)
            if parser.error:
                await response.aclose()
                return Failure(True, f"stream error before any output: {parser.error}")
            held_events += 1
            if chunk and (carries_output(up.api, event.name, loads(event.data)) or held_events >= MAX_HELD_EVENTS):
                return reply
        if not chunk:
            reply.response = None  # ended while still held: nothing more to read
            await response.aclose()
            return reply


async def _read_bounded(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_ERROR_BODY:
            break
    return bytes(body[:MAX_ERROR_BODY])
