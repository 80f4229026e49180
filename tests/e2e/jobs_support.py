"""Helpers of the async-job tests: a schema per test module, a webhook receiver, job polling."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg

SECRET = "whsec-test-" + "x" * 16
FINAL = ("completed", "failed", "cancelled")


def schema_url(pg_url: str) -> tuple[str, str]:
    """A fresh schema and a URL whose connections use it (every table of the proxies lands there)."""
    schema = f"llmp_jobs_{secrets.token_hex(5)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    return schema, f"{pg_url}{sep}options=-csearch_path%3D{schema}"


def drop_schema(pg_url: str, schema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def verify(secret: str, body: bytes, header: str) -> bool:
    """The documented check, with nothing but hmac and hashlib."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode("utf-8"), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local webhook receiver. Paths: /ok (200), /flaky/<name> (500, 500, then 200), /hang (never answers)."""

    hits: list[Hit] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                             time.monotonic()))
                    count = receiver._counts[self.path] = receiver._counts.get(self.path, 0) + 1
                if self.path.startswith("/hang"):
                    time.sleep(3)
                    return
                status = 500 if self.path.startswith("/flaky") and count <= 2 else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def on(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def wait(self, path: str, count: int, timeout: float = 20) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while len(self.on(path)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.on(path)


def job(base: str, job_id: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{base}/_llm/jobs/{job_id}", headers=headers, timeout=10)


def wait_job(base: str, job_id: str, token: str | None = None, *, until: tuple[str, ...] = FINAL,
             timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = job(base, job_id, token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["status"] in until or time.monotonic() > deadline:
            assert body["status"] in until, body
            return body
        time.sleep(0.05)


def submit(base: str, key: str, *, webhook: str | None = None, body: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None, path: str = "/v1/chat/completions") -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", "prefer": "respond-async", **(headers or {})}
    if webhook is not None:
        sent["llm-webhook"] = webhook
    return httpx.post(base + path, json=body or {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                      headers=sent, timeout=10)


class Held:
    """An OpenAI-shaped upstream whose answers wait until the test releases them."""

    def __init__(self) -> None:
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                held.release.wait(30)
                body = json.dumps({"id": "held", "object": "chat.completion", "model": "gpt-4o-mini",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
