"""A fake xAI / Azure OpenAI / Bedrock runtime / Vertex AI upstream that keeps every request byte.

Answers by path with the transcripts of tests/unit/cloud_transcripts.py (built from
each provider's documented format), streams in several chunks cut at odd places
(event-stream frames split mid-prelude), and records each request exactly as it
came off the socket: request line, header lines in order and body bytes, so a test
can prove the proxy passed a signed request on unaltered.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from tests.unit import cloud_transcripts as T

EVENTSTREAM = "application/vnd.amazon.eventstream"
AZURE_EMBEDDINGS = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
                    "model": "text-embedding-3-small", "usage": {"prompt_tokens": 6, "total_tokens": 6}}


@dataclass
class RawRequest:
    request_line: bytes
    header_lines: list[bytes]  # exactly as received, in order, without the CRLF
    body: bytes

    @property
    def target(self) -> str:
        return self.request_line.split(b" ")[1].decode()

    def json(self) -> Any:
        return json.loads(self.body)


def reply_for(path: str, body: bytes) -> tuple[str, bytes, bool]:
    """(content type, bytes, streamed) for a request path."""
    bare = path.partition("?")[0]
    if bare.endswith("/converse"):
        return "application/json", json.dumps(T.CONVERSE_JSON).encode(), False
    if bare.endswith("/converse-stream"):
        if "corrupt" in bare:  # one payload byte flipped in the last frame: its CRC no longer matches
            data = bytearray(T.CONVERSE_STREAM)
            data[-10] ^= 0x01
            return EVENTSTREAM, bytes(data), True
        return EVENTSTREAM, T.CONVERSE_STREAM, True
    if bare.endswith("/invoke"):
        return "application/json", json.dumps(T.INVOKE_JSON).encode(), False
    if bare.endswith("/invoke-with-response-stream"):
        return EVENTSTREAM, T.INVOKE_STREAM, True
    if bare.endswith(":generateContent"):
        return "application/json", json.dumps(T.VERTEX_GEMINI_JSON).encode(), False
    if bare.endswith(":streamGenerateContent"):
        return "text/event-stream", T.VERTEX_GEMINI_SSE, True
    if bare.endswith(":rawPredict"):
        return "application/json", json.dumps(T.VERTEX_RAW_JSON).encode(), False
    if bare.endswith(":streamRawPredict"):
        return "text/event-stream", T.VERTEX_RAW_SSE, True
    if bare.endswith("/embeddings"):
        return "application/json", json.dumps(AZURE_EMBEDDINGS).encode(), False
    if bare.endswith("/responses"):
        return "application/json", json.dumps(T.XAI_RESPONSES_JSON).encode(), False
    if bare.endswith("/chat/completions"):
        streamed = b'"stream": true' in body or b'"stream":true' in body
        azure = "/openai/" in bare
        if streamed:
            return "text/event-stream", T.AZURE_CHAT_SSE, True
        return "application/json", json.dumps(T.AZURE_CHAT_JSON if azure else T.XAI_CHAT_JSON).encode(), False
    return "application/json", b'{"message": "not found"}', False


def _pieces(data: bytes) -> list[bytes]:
    """Cut at odd places: mid-prelude, mid-header, mid-payload."""
    cuts = [0, 5, 13, 31, 97, 211, 500, 1001]
    cuts = [c for c in cuts if c < len(data)] + [len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:]) if data[a:b]]


class CloudUpstream:
    def __init__(self) -> None:
        self.requests: list[RawRequest] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CloudUpstream:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="cloud-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> CloudUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                request = RawRequest(lines[0], lines[1:], body)
                self.requests.append(request)
                content_type, data, streamed = reply_for(request.target, body)
                status = b"404 Not Found" if b'"not found"' in data else b"200 OK"
                if not streamed:
                    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type.encode()
                                 + b"\r\ncontent-length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type.encode()
                             + b"\r\ntransfer-encoding: chunked\r\nx-amzn-requestid: fake-1\r\n\r\n")
                for piece in _pieces(data):
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.005)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
