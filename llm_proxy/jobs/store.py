"""The `llm_jobs` table (and `llm_budget_alerts`): every job's state, on PostgreSQL or SQLite.

Jobs wait here, not in memory: the runner asks for the next few when it has
room, so 10,000 queued jobs cost the proxy nothing but rows. Every method is
synchronous and runs on the store's one worker thread with its own
connection (`JobStore.run` awaits it), so the event loop never waits for the
database. SQL is written once with `?` placeholders; PostgreSQL gets `%s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from ..storage.dsn import Database
from ..storage.schema import schema_for, sqlite_schema

logger = logging.getLogger(__name__)

T = TypeVar("T")
FINAL = ("completed", "failed", "cancelled")
_SCHEMA_LOCK = 0x6C6C6D70  # the same lock the writer takes: one start-up at a time applies the DDL
_TS = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # fixed width: SQLite compares these as text
_COLUMNS = ("id", "node", "status", "created", "key_id", "mode", "method", "scheme", "host", "port", "path",
            "headers", "body", "needs_credential", "credential", "webhook", "webhook_status")
_ROW = ("seq, id, node, status, created, started, finished, key_id, mode, method, scheme, host, port, path, "
        "headers, body, needs_credential, credential, rerun, request_id, attempts, response_status, "
        "response_body, error, webhook, webhook_status, webhook_tries, webhook_error")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class NewJob:
    id: str
    node: str
    created: datetime
    key_id: str | None
    mode: str
    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: list[list[str]]
    body: bytes
    needs_credential: bool
    credential: bytes | None
    webhook: str | None


@dataclass(slots=True)
class JobRow:
    """One row of llm_jobs as Python values."""

    seq: int
    id: str
    node: str
    status: str
    created: datetime
    started: datetime | None
    finished: datetime | None
    key_id: str | None
    mode: str | None
    method: str
    scheme: str
    host: str
    port: int
    path: str
    headers: list[list[str]]
    body: bytes
    needs_credential: bool
    credential: bytes | None
    rerun: bool
    request_id: str | None
    attempts: list[dict[str, Any]]
    response_status: int | None
    response_body: bytes | None
    error: str | None
    webhook: str | None
    webhook_status: str | None
    webhook_tries: int
    webhook_error: str | None
    queue_position: int | None = field(default=None)


def _ts_in(value: datetime | None, sqlite: bool) -> Any:
    if value is None or not sqlite:
        return value
    return value.astimezone(UTC).strftime(_TS)


def _ts_out(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class JobStore:
    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table  # the calls table: schema.sql is applied whole, as the writer does
        self.sqlite = database.kind == "sqlite"
        self._conn: Any = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llm-proxy-jobs-db")
        self._closed = threading.Event()

    # --- plumbing -----------------------------------------------------------------------

    async def run(self, work: Callable[[JobStore], T]) -> T:
        """Run `work(self)` on the store's thread; the event loop only awaits it."""
        return await asyncio.wrap_future(self._pool.submit(self._guarded, work))

    def _guarded(self, work: Callable[[JobStore], T]) -> T:
        try:
            if self._conn is None:
                self.connect()
            return work(self)
        except (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError):
            self._drop()  # reconnect on the next call
            raise

    def connect(self) -> None:
        if self.sqlite:
            path = Path(self.database.target)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(sqlite_schema(self.table))
        else:
            conn = psycopg.connect(self.database.target, connect_timeout=5, autocommit=True,
                                   application_name="llm-proxy-jobs")
            conn.execute("SET statement_timeout = 30000")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(schema_for(self.table).encode())
        self._conn = conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        self._pool.submit(self._drop)
        self._pool.shutdown(wait=False)

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if not self.sqlite:
            sql = sql.replace("?", "%s")
        return self._conn.execute(sql, params)

    def _ts(self, value: datetime | None) -> Any:
        return _ts_in(value, self.sqlite)

    # --- jobs ---------------------------------------------------------------------------

    def insert(self, job: NewJob) -> None:
        values = (job.id, job.node, "queued", self._ts(job.created), job.key_id, job.mode, job.method, job.scheme,
                  job.host, job.port, job.path, json.dumps(job.headers), job.body, job.needs_credential,
                  job.credential, job.webhook, "pending" if job.webhook else None)
        self._q(f"INSERT INTO llm_jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values)

    def _row(self, raw: tuple[Any, ...]) -> JobRow:
        (seq, id_, node, status, created, started, finished, key_id, mode, method, scheme, host, port, path,
         headers, body, needs_credential, credential, rerun, request_id, attempts, response_status, response_body,
         error, webhook, webhook_status, webhook_tries, webhook_error) = raw
        return JobRow(seq, id_, node, status, _ts_out(created), _ts_out(started), _ts_out(finished), key_id, mode,
                      method, scheme, host, int(port), path, json.loads(headers), _bytes(body) or b"",
                      bool(needs_credential), _bytes(credential), bool(rerun), request_id,
                      json.loads(attempts) if attempts else [], response_status, _bytes(response_body), error,
                      webhook, webhook_status, int(webhook_tries or 0), webhook_error)

    def get(self, job_id: str) -> JobRow | None:
        raw = self._q(f"SELECT {_ROW} FROM llm_jobs WHERE id = ?", (job_id,)).fetchone()
        if raw is None:
            return None
        row = self._row(raw)
        if row.status == "queued":
            (ahead,) = self._q("SELECT count(*) FROM llm_jobs WHERE node = ? AND status = 'queued' AND seq < ?",
                               (row.node, row.seq)).fetchone()
            row.queue_position = int(ahead) + 1
        return row

    def cancel(self, job_id: str, when: datetime) -> str | None:
        """'cancelled', or the status that forbids it, or None if there is no such job."""
        changed = self._q("UPDATE llm_jobs SET status = 'cancelled', finished = ?, "
                          "webhook_status = CASE WHEN webhook IS NULL THEN NULL ELSE 'pending' END "
                          "WHERE id = ? AND status = 'queued'", (self._ts(when), job_id)).rowcount
        if changed:
            return "cancelled"
        found = self._q("SELECT status FROM llm_jobs WHERE id = ?", (job_id,)).fetchone()
        return None if found is None else found[0]

    def next_queued(self, node: str, limit: int, skip: tuple[int, ...] = ()) -> list[JobRow]:
        """The oldest queued jobs of `node` (not those in `skip`: seqs already being started)."""
        rows = self._q(f"SELECT {_ROW} FROM llm_jobs WHERE node = ? AND status = 'queued' ORDER BY seq LIMIT ?",
                       (node, limit + len(skip))).fetchall()
        return [r for r in map(self._row, rows) if r.seq not in skip][:limit]

    def claim(self, job_id: str, when: datetime) -> bool:
        """queued -> running; False if it was cancelled (or taken) meanwhile."""
        return bool(self._q("UPDATE llm_jobs SET status = 'running', started = ? WHERE id = ? AND status = 'queued'",
                            (self._ts(when), job_id)).rowcount)

    def started_call(self, job_id: str, request_id: str) -> None:
        self._q("UPDATE llm_jobs SET request_id = ? WHERE id = ?", (request_id, job_id))

    def finish(self, job_id: str, status: str, when: datetime, *, response_status: int | None,
               response_body: bytes | None, error: str | None, attempt: dict[str, Any] | None) -> None:
        raw = self._q("SELECT attempts FROM llm_jobs WHERE id = ?", (job_id,)).fetchone()
        attempts = (json.loads(raw[0]) if raw and raw[0] else []) + ([attempt] if attempt else [])
        self._q("UPDATE llm_jobs SET status = ?, finished = ?, response_status = ?, response_body = ?, error = ?, "
                "attempts = ?, credential = NULL, "
                "webhook_status = CASE WHEN webhook IS NULL THEN NULL ELSE 'pending' END WHERE id = ?",
                (status, self._ts(when), response_status, response_body, error, json.dumps(attempts), job_id))

    def webhook_progress(self, job_id: str, tries: int, error: str | None, status: str = "pending") -> None:
        self._q("UPDATE llm_jobs SET webhook_tries = ?, webhook_error = ?, webhook_status = ? WHERE id = ?",
                (tries, error, status, job_id))

    def recover(self, node: str, when: datetime) -> tuple[int, int]:
        """After a restart: jobs of `node` that were running run once more (marked as a re-run);
        one that was already a re-run fails. Returns (requeued, failed)."""
        rows = self._q("SELECT id, rerun, request_id, started, attempts FROM llm_jobs "
                       "WHERE node = ? AND status = 'running'", (node,)).fetchall()
        requeued = failed = 0
        for job_id, rerun, request_id, started, attempts in rows:
            history = (json.loads(attempts) if attempts else []) + [{
                "request_id": request_id, "started": _iso(_ts_out(started)), "rerun": bool(rerun),
                "outcome": "interrupted: the proxy stopped while this call ran (the provider may have billed it)"}]
            if rerun:
                self._q("UPDATE llm_jobs SET status = 'failed', finished = ?, attempts = ?, credential = NULL, "
                        "error = 'the proxy stopped twice while this job ran; it is not run a third time', "
                        "webhook_status = CASE WHEN webhook IS NULL THEN NULL ELSE 'pending' END WHERE id = ?",
                        (self._ts(when), json.dumps(history), job_id))
                failed += 1
            else:
                self._q("UPDATE llm_jobs SET status = 'queued', rerun = ?, started = NULL, request_id = NULL, "
                        "attempts = ? WHERE id = ?", (True, json.dumps(history), job_id))
                requeued += 1
        return requeued, failed

    def pending_webhooks(self, node: str) -> list[JobRow]:
        rows = self._q(f"SELECT {_ROW} FROM llm_jobs WHERE node = ? AND webhook_status = 'pending' "
                       "AND status IN ('completed', 'failed', 'cancelled') ORDER BY seq", (node,)).fetchall()
        return [self._row(r) for r in rows]

    def expire(self, before: datetime) -> int:
        """Forget finished jobs older than the TTL (not those whose webhook is still being delivered)."""
        return int(self._q("DELETE FROM llm_jobs WHERE finished < ? AND status IN ('completed', 'failed', "
                           "'cancelled') AND (webhook_status IS NULL OR webhook_status <> 'pending')",
                           (self._ts(before),)).rowcount)

    def queued_count(self, node: str) -> int:
        (count,) = self._q("SELECT count(*) FROM llm_jobs WHERE node = ? AND status = 'queued'", (node,)).fetchone()
        return int(count)

    # --- budget alerts ------------------------------------------------------------------

    def alert_once(self, key_id: str, period_start: datetime, threshold: int, spend: Decimal, when: datetime) -> bool:
        """Record that this alert is being sent; False if any proxy sharing the database already did."""
        return bool(self._q("INSERT INTO llm_budget_alerts (key_id, period_start, threshold, spend_usd, sent) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (key_id, self._ts(period_start), threshold,
                             str(spend) if self.sqlite else spend, self._ts(when))).rowcount)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
