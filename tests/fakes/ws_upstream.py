"""A fake Responses API in WebSocket mode, for end-to-end tests.

It accepts the upgrade on any path ending in `/responses` and answers each
`response.create` with the documented Responses streaming events, as OpenAI's
WebSocket mode sends them: `response.created`, `response.in_progress`, output
item and content part events, `response.output_text.delta` pieces with real
pauses, the `.done` events and one terminal event (`response.completed`,
`response.incomplete`, `response.failed`) whose `response.usage` carries the
tokens; or an `error` event (`{"type": "error", "status", "error": {...}}`)
for a message it cannot take, after which the socket stays open. Big events
are sent fragmented (continuation frames), as a real server may.

What to do per call comes from the response.create's `metadata.fake` (a JSON
string, since metadata values are strings): `input`, `cached`, `output`,
`reasoning` token counts, `pieces` and `delay` of the text deltas,
`terminal` ("completed", "incomplete", "failed", "error"), `error_status`,
`cut` ("abort": drop the TCP connection, "close": a close frame 1011)
after `cut_after` events, and `successor` (then a second response follows
on its own, with `successor_output` output tokens, as the API's automatic
successors do).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

FRAGMENT = 512  # events bigger than this go out in several frames


@dataclass
class Handshake:
    path: str
    headers: dict[str, str]


@dataclass
class FakeWsUpstream:
    # Recorded exchanges to replay instead of made-up answers, by name: a connection whose
    # handshake has `x-fake-script: NAME` answers its Nth response.create with scripts[NAME][N],
    # a list of server messages, each a list of frames.
    scripts: dict[str, list[list[list[str]]]] = field(default_factory=dict)
    handshakes: list[Handshake] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)  # every client message, in order

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeWsUpstream:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-ws-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake WebSocket upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeWsUpstream:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, process_request=self._check, max_size=None,
                         compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await self._stop.wait()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        self.handshakes.append(Handshake(request.path, {k.lower(): v for k, v in request.headers.raw_items()}))
        if not path.rstrip("/").endswith("/responses"):
            return connection.respond(404, "not found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        creates = 0
        script = self.scripts.get(ws.request.headers.get("x-fake-script", "")) if ws.request else None
        try:
            async for message in ws:
                self.received.append(message)
                event = _loads(message)
                if not isinstance(event, dict) or event.get("type") != "response.create":
                    await ws.send(_error(400, "invalid_request_error", "unknown_event",
                                         "the message is not a client event this server knows"))
                    continue
                creates += 1
                if script is not None:
                    await _replay(ws, script[(creates - 1) % len(script)])
                elif not await _answer(ws, event):
                    return
        except Exception:  # a test that cut the connection: nothing to clean up
            return


def _loads(message: str | bytes) -> Any:
    try:
        return json.loads(message)
    except (ValueError, RecursionError):
        return None


def _error(status: int, kind: str, code: str, message: str, stream_id: str | None = None) -> str:
    event: dict[str, Any] = {"type": "error", "status": status,
                             "error": {"type": kind, "code": code, "message": message, "param": None}}
    if stream_id:
        event["stream_id"] = stream_id
    return json.dumps(event)


async def _replay(ws: ServerConnection, messages: list[list[str]]) -> None:
    for frames in messages:
        await ws.send(frames if len(frames) > 1 else frames[0])
        await asyncio.sleep(0.002)


def _scenario(event: dict[str, Any]) -> dict[str, Any]:
    metadata = event.get("metadata")
    raw = metadata.get("fake") if isinstance(metadata, dict) else None
    found = _loads(raw) if isinstance(raw, str) else None
    return found if isinstance(found, dict) else {}


async def _answer(ws: ServerConnection, create: dict[str, Any]) -> bool:
    """Stream one response; False once the connection was cut on purpose."""
    s = _scenario(create)
    stream_id = create.get("stream_id") if isinstance(create.get("stream_id"), str) else None
    terminal = s.get("terminal", "completed")
    if terminal == "error":
        await ws.send(_error(s.get("error_status", 400), "invalid_request_error", "previous_response_not_found",
                             "Previous response with id 'resp_missing' not found.", stream_id))
        return True
    model = create.get("model") or "gpt-5"
    response_id = "resp_" + secrets.token_hex(12)
    item_id = "msg_" + secrets.token_hex(12)
    pieces = [f"piece {i} " for i in range(int(s.get("pieces", 5)))]
    delay = float(s.get("delay", 0.01))
    cut_after = s.get("cut_after")
    usage = {
        "input_tokens": s.get("input", 120),
        "input_tokens_details": {"cached_tokens": s.get("cached", 0)},
        "output_tokens": s.get("output", 40),
        "output_tokens_details": {"reasoning_tokens": s.get("reasoning", 0)},
        "total_tokens": s.get("input", 120) + s.get("output", 40),
    }

    def response(status: str, **extra: Any) -> dict[str, Any]:
        return {"id": response_id, "object": "response", "created_at": 1764480000, "status": status,
                "model": model, "output": [], "usage": None, **extra}

    text = "".join(pieces)
    message = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("in_progress")},
        {"type": "response.in_progress", "response": response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        *({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0,
           "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0,
         "text": text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0,
         "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
    ]
    if terminal == "failed":
        events.append({"type": "response.failed", "response": response(
            "failed", usage=usage, error={"code": "server_error", "message": "The model failed."})})
    elif terminal == "incomplete":
        events.append({"type": "response.incomplete", "response": response(
            "incomplete", output=[message], usage=usage, incomplete_details={"reason": "max_output_tokens"})})
    else:
        events.append({"type": "response.completed", "response": response("completed", output=[message],
                                                                           usage=usage)})
    if s.get("successor"):  # the API's automatic successor: a second response nobody sent a create for
        successor = dict(s, successor=False, output=s.get("successor_output", 11))
        events.append({"type": "successor", "scenario": successor})
    for number, event in enumerate(events):
        if event["type"] == "successor":
            return await _answer(ws, {**create, "metadata": {"fake": json.dumps(event["scenario"])}})
        if cut_after is not None and number >= cut_after:
            if s.get("cut") == "close":
                await ws.close(1011, "upstream gave up")
            else:
                ws.transport.abort()
            return False
        event["sequence_number"] = number
        if stream_id:
            event["stream_id"] = stream_id
        data = json.dumps(event)
        if len(data) > FRAGMENT:
            await ws.send([data[i:i + FRAGMENT] for i in range(0, len(data), FRAGMENT)])
        else:
            await ws.send(data)
        if event["type"].endswith(".delta"):
            await asyncio.sleep(delay)
    return True
