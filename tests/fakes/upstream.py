"""A fake LLM provider ("upstream") for end-to-end tests and benchmarks.

It speaks the OpenAI, Anthropic, Gemini and Ollama wire formats (see
``formats.py``), JSON and streamed, with per-request token usage, timing and
failures controlled by the ``x-fake-scenario`` header (or the ``fake_scenario``
query parameter). It is deliberately built on raw asyncio streams rather than a
web framework: the proxy under test must see realistic HTTP/1.1 framing
(keep-alive, Content-Length, chunked bodies written event by event with real
pauses, abrupt disconnects), and the benchmark needs it to be cheap.

Usage::

    with FakeUpstream().start() as up:
        client = openai.OpenAI(base_url=up.url + "/v1", api_key="x")
        ...
        assert up.requests[-1].json["model"] == "gpt-x"

or standalone: ``python -m tests.fakes.upstream --port 9000 [--tls] [--delay 0.01]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import shutil
import signal
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .formats import (JsonReply, Scenario, ScenarioError, StreamReply, build, dumps, error_body,
                      make_call, route)

log = logging.getLogger(__name__)

_READ_LIMIT = 1 << 20  # longest accepted request/header line
_REPLAY_CHUNK = 64
_CLIENT_GONE = (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError)


@dataclass
class RecordedRequest:
    """One request as the fake received it, for tests to assert on."""

    method: str
    path: str  # without the query string
    query: dict[str, str]  # last value wins
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any | None  # the parsed body if it is JSON, else None


class _BadRequest(Exception):
    """Malformed HTTP: answered with 400 and the connection is closed."""


@dataclass
class _RawRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


# ---------------------------------------------------------------- HTTP parsing

async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # line longer than the reader's limit
        raise _BadRequest("request line or header too long") from None


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _RawRequest | None:
    """Read one request; None on a clean EOF between requests."""
    line = await _readline(reader)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between keep-alive requests
        line = await _readline(reader)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(f"malformed request line: {line[:100]!r}")
    headers = await _read_headers(reader)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest("bad content-length") from None
        if length < 0:
            raise _BadRequest("bad content-length")
        body = await reader.readexactly(length)
    return _RawRequest(parts[0].upper(), parts[1], parts[2], headers, body)


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await _readline(reader)
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if line in (b"\r\n", b"\n"):
            return headers
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if not sep or not name.strip():
            raise _BadRequest(f"malformed header line: {line[:100]!r}")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await _readline(reader)).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise _BadRequest(f"bad chunk size: {size_line[:20]!r}") from None
        if size == 0:
            await _read_headers(reader)  # trailers
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # CRLF after the chunk


def _parse_json(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# ---------------------------------------------------------------- HTTP writing

def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = {529: "Overloaded"}.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _slices(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def _write_chunks(writer: asyncio.StreamWriter, pieces: list[bytes], delay: float) -> None:
    """Write each piece as its own HTTP chunk, flushed, with ``delay`` between pieces."""
    for i, piece in enumerate(pieces):
        if i and delay > 0:
            await asyncio.sleep(delay)
        if piece:  # an empty chunk would terminate the body
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()


# ---------------------------------------------------------------- TLS

def _make_tls(directory: Path) -> tuple[ssl.SSLContext, str]:
    """A throwaway self-signed cert for localhost and 127.0.0.1.

    It is its own CA (basicConstraints CA, key identifiers) so Python 3.13's
    strict verification accepts it when a client trusts the PEM file.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-upstream-cert.pem", directory / "fake-upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["http/1.1"])
    return context, str(cert_path)


# ---------------------------------------------------------------- the server

class FakeUpstream:
    """The fake provider; ``start()`` serves from a daemon thread with its own loop."""

    def __init__(self, *, tls: bool = False, host: str = "127.0.0.1", port: int = 0,
                 default_delay: float = 0.01) -> None:
        self.tls = tls
        self.host = host
        self.port = port
        self.default_delay = default_delay
        self.ca_pem_path: str | None = None
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._fail_counts: dict[str, int] = {}
        self._request_no = 0
        self.active = 0  # requests being answered now
        self.max_active = 0  # the most answered at once (tests of concurrency limits reset it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tmpdir: str | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    # -- lifecycle

    def start(self) -> FakeUpstream:
        """Start listening; returns once the port is bound (so ``url`` is valid)."""
        if self._thread is not None:
            return self
        context = None
        if self.tls:
            self._tmpdir = tempfile.mkdtemp(prefix="fake-upstream-")
            context, self.ca_pem_path = _make_tls(Path(self._tmpdir))
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(context, ready, failure),
                                        name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            self._thread = None
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def clear(self) -> None:
        """Forget recorded requests and the ``fail_first`` counters."""
        with self._lock:
            self.requests.clear()
            self._fail_counts.clear()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self, context: ssl.SSLContext | None, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._serve_connection, self.host, self.port, ssl=context, limit=_READ_LIMIT))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # report bind errors to start()'s caller
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        except TimeoutError:
            pass

    # -- per connection

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one keep-alive connection until either side closes it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    request = await _read_request(reader, writer)
                except _BadRequest as exc:
                    await self._send_error(writer, "openai", 400, str(exc), self._next_id(), keep_alive=False)
                    break
                if request is None:
                    break
                with self._lock:
                    self.active += 1
                    self.max_active = max(self.max_active, self.active)
                try:
                    if not await self._handle(request, writer):
                        break
                finally:
                    with self._lock:
                        self.active -= 1
        except _CLIENT_GONE:
            pass
        except asyncio.CancelledError:
            pass  # server shutting down
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, raw: _RawRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection stays open."""
        rid = self._next_id()
        split = urlsplit(raw.target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        parsed = _parse_json(raw.body)
        with self._lock:
            self.requests.append(RecordedRequest(raw.method, split.path, query, raw.headers, raw.body, parsed))
        api, gemini_model = route(split.path)
        family, keep = api.family, raw.keep_alive
        if raw.method == "HEAD":  # a reachability probe (Claude Code sends HEAD /anthropic): headers only
            writer.write(_head(200, self._common_headers("application/json", rid, keep) + [("content-length", "0")]))
            await writer.drain()
            return keep
        try:
            scenario = Scenario.parse(raw.headers.get("x-fake-scenario") or query.get("fake_scenario"))
        except ScenarioError as exc:
            await self._send_error(writer, family, 400, str(exc), rid, keep)
            return keep
        body_model = parsed.get("model") if isinstance(parsed, dict) else None
        scenario = scenario.for_model(gemini_model or body_model)
        if scenario.first_delay:
            await asyncio.sleep(scenario.first_delay)
        retry = [] if scenario.retry_after is None else [("retry-after", f"{scenario.retry_after:g}")]
        if failure := self._failure_number(scenario):
            message = f"fake failure {failure}/{scenario.fail_first} for scenario id {scenario.id!r}"
            await self._send_error(writer, family, scenario.fail_status, message, rid, keep, retry)
            return keep
        if scenario.status is not None and scenario.status >= 400:
            await self._send_error(writer, family, scenario.status, f"fake error status {scenario.status}",
                                   rid, keep, retry)
            return keep
        if scenario.replay:
            return await self._send_replay(writer, family, scenario, rid, keep)
        try:
            reply = build(make_call(api, split.path, parsed, query, scenario, gemini_model))
        except Exception as exc:  # a builder bug must not kill the server
            log.exception("fake upstream failed to build a reply")
            await self._send_error(writer, family, 500, f"fake upstream error: {exc!r}", rid, keep)
            return keep
        if isinstance(reply, StreamReply):
            return await self._send_stream(writer, reply, scenario, rid, keep)
        if scenario.drop_after is not None:
            return False  # hang up without answering
        status = scenario.status if scenario.status is not None else reply.status
        await self._send_json(writer, status, reply, rid, keep)
        return keep

    def _next_id(self) -> str:
        with self._lock:
            self._request_no += 1
            return f"fake-{self._request_no}"

    def _failure_number(self, scenario: Scenario) -> int:
        """Count requests per scenario ``id``; the first ``fail_first`` of them
        must fail: returns which failure this is (1-based), or 0 to succeed."""
        if scenario.fail_first <= 0:
            return 0
        with self._lock:
            seen = self._fail_counts.get(scenario.id, 0) + 1
            self._fail_counts[scenario.id] = seen
        return seen if seen <= scenario.fail_first else 0

    # -- responses

    @staticmethod
    def _common_headers(content_type: str, rid: str, keep: bool) -> list[tuple[str, str]]:
        return [("content-type", content_type), ("x-request-id", rid), ("server", "fake-upstream"),
                ("connection", "keep-alive" if keep else "close")]

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, reply: JsonReply, rid: str,
                         keep: bool, extra: list[tuple[str, str]] | None = None) -> None:
        body = dumps(reply.body)
        headers = self._common_headers(reply.content_type, rid, keep) + (extra or [])
        writer.write(_head(status, headers + [("content-length", str(len(body)))]) + body)
        await writer.drain()

    async def _send_error(self, writer: asyncio.StreamWriter, family: str, status: int, message: str, rid: str,
                          keep_alive: bool, extra: list[tuple[str, str]] | None = None) -> None:
        reply = JsonReply(error_body(family, status, message), status)
        await self._send_json(writer, status, reply, rid, keep_alive, extra)

    async def _start_chunked(self, writer: asyncio.StreamWriter, content_type: str, rid: str, keep: bool) -> None:
        headers = self._common_headers(content_type, rid, keep)
        headers += [("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
        writer.write(_head(200, headers))
        await writer.drain()

    async def _send_stream(self, writer: asyncio.StreamWriter, reply: StreamReply, scenario: Scenario,
                           rid: str, keep: bool) -> bool:
        """Stream the events, cut short by ``error_after`` / ``drop_after`` if asked.

        When either is given the normal tail is never sent, even if the cut
        point is past the last delta.
        """
        delay = self.default_delay if scenario.delay is None else scenario.delay
        drop, error = scenario.drop_after, scenario.error_after
        dropping = drop is not None and (error is None or drop <= error)
        if dropping:
            events = reply.head + reply.deltas[:drop]
        elif error is not None:
            sent = reply.deltas[:error]
            events = reply.head + sent + [reply.error(len(sent))]
        else:
            events = reply.head + reply.deltas + reply.tail
        if scenario.chunk_size:
            events = _slices(b"".join(events), scenario.chunk_size)
        await self._start_chunked(writer, reply.content_type, rid, keep)
        await _write_chunks(writer, events, delay)
        if dropping:
            writer.close()  # no terminating chunk: the client sees a truncated body
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep

    async def _send_replay(self, writer: asyncio.StreamWriter, family: str, scenario: Scenario, rid: str,
                           keep: bool) -> bool:
        """Send a recorded body byte for byte, in slices, as a chunked 200."""
        path = Path(scenario.replay or "")
        try:
            data = path.read_bytes()
        except OSError as exc:
            await self._send_error(writer, family, 400, f"fake replay file unreadable: {exc}", rid, keep)
            return keep
        content_type = scenario.content_type or _guess_content_type(path)
        delay = self.default_delay if scenario.delay is None else scenario.delay
        await self._start_chunked(writer, content_type, rid, keep)
        await _write_chunks(writer, _slices(data, scenario.chunk_size or _REPLAY_CHUNK), delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep


def _guess_content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "application/json"
    if suffix in (".ndjson", ".jsonl"):
        return "application/x-ndjson"
    return "text/event-stream"


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Clients vanishing (resets, aborted TLS handshakes) is normal for this server."""
    if isinstance(context.get("exception"), _CLIENT_GONE):
        return
    loop.default_exception_handler(context)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C (used by the benchmark)."""
    parser = argparse.ArgumentParser(description="Fake LLM upstream (OpenAI/Anthropic/Gemini/Ollama)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--delay", type=float, default=0.01, help="default seconds between streamed events")
    args = parser.parse_args(argv)
    # Stop cleanly on Ctrl-C and on SIGTERM (how a benchmark ends its subprocess),
    # even when started in the background where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    up = FakeUpstream(tls=args.tls, host=args.host, port=args.port, default_delay=args.delay).start()
    print(f"fake upstream listening on {up.url}", flush=True)
    if up.ca_pem_path:
        print(f"CA certificate: {up.ca_pem_path}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        up.stop()


if __name__ == "__main__":
    main()
