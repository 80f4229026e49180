"""The job queue's runner: starts queued jobs in order, within its concurrency and the global gate.

Queued jobs wait in the table; the runner fetches one at a time when it has a
free slot, so memory does not grow with the queue. When the proxy has a global
gate (llm_max_concurrent), the runner takes a gate slot *before* it starts a
job, in the gate's own FIFO with every other call: until it has one the job is
still `queued` (and can be cancelled); the job's call then passes the gate
without waiting again (flow metadata GATE_HELD) and the runner gives the slot
back when the call ends.

A job's call is sent to the proxy's own listening port (see addon.py), so it
takes the same path as any call: key checks, limits, routing, retries,
fallbacks and its one row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from ..limits.gate import Gate
from .store import JobRow, JobStore, now

logger = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at the table while jobs wait (for a slot or the gate)
IDLE = 30.0  # ... and when none is queued: only this proxy queues jobs for itself, and it wakes the runner
JOB_TIMEOUT = 900.0  # seconds a job's call may take in all


@dataclass(slots=True)
class Request:
    """What to send for a job: built by the addon (it knows modes, keys and credentials)."""

    url: str
    headers: list[tuple[str, str]]
    body: bytes
    proxy: str | None = None  # regular mode: the proxy's own address, used as an HTTP proxy
    key_hash: str | None = None  # keys mode: the key the call runs as
    scheme: str | None = None  # regular mode: the scheme the call really has upstream


@dataclass(slots=True)
class Active:
    """A running job, as the proxy's request hook sees it when the job's call arrives."""

    job: JobRow
    request: Request | None = None
    gate: Gate | None = None
    request_id: str | None = None
    started: datetime = field(default_factory=now)


@dataclass(slots=True)
class Result:
    status: str  # completed | failed
    response_status: int | None = None
    response_body: bytes | None = None
    error: str | None = None


Prepare = Callable[[JobRow], Request | str]  # a Request, or why the job cannot run
Finished = Callable[[str], Awaitable[None]]


class Runner:
    def __init__(self, store: JobStore, node: str, concurrency: int, gate: Callable[[], Gate | None],
                 prepare: Prepare, marker: Callable[[str], str], finished: Finished) -> None:
        self.store = store
        self.node = node
        self.concurrency = concurrency
        self.gate = gate
        self.prepare = prepare
        self.marker = marker  # job id -> the internal header's value
        self.finished = finished
        self.active: dict[str, Active] = {}
        self._wake = asyncio.Event()
        self._stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        for client in self._clients.values():
            self._spawn(client.aclose())
        self._clients.clear()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def loop(self) -> None:
        failing = False
        while not self._stopped:
            self._wake.clear()
            idle = False
            try:
                idle = await self.fill()
                if failing:
                    logger.warning("llm-proxy jobs: the jobs table is reachable again")
                failing = False
            except Exception as e:
                if not failing:  # once per outage, not once a second
                    logger.warning("llm-proxy jobs: cannot start queued jobs (%s); trying again", e)
                failing = True
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE if idle else POLL)
            except TimeoutError:
                pass

    async def fill(self) -> bool:
        """Start queued jobs, oldest first, while there is room; True when none is left queued."""
        while not self._stopped and len(self.active) < self.concurrency:
            rows = await self.store.run(lambda s: s.next_queued(self.node, 1))
            if not rows:
                return True
            job = rows[0]
            gate = self.gate()
            if gate is not None and await gate.enter() is not None:
                return False  # the gate is full or timed out: the job stays queued; try again soon
            claimed = False
            try:
                claimed = await self.store.run(lambda s: s.claim(job.id, now()))
            finally:
                if not claimed and gate is not None:
                    gate.leave()
            if not claimed:
                continue  # cancelled meanwhile: the next one
            active = self.active[job.id] = Active(job, gate=gate)
            self._spawn(self._run(active))
        return False

    async def _run(self, active: Active) -> None:
        job = active.job
        try:
            prepared = self.prepare(job)
            if isinstance(prepared, str):
                result = Result("failed", error=prepared)
            else:
                active.request = prepared
                result = await self._send(job, prepared)
        except Exception as e:
            logger.exception("llm-proxy jobs: job %s failed in the proxy", job.id)
            result = Result("failed", error=f"llm-proxy could not run this job ({type(e).__name__})")
        finally:
            if active.gate is not None:
                active.gate.leave()
                active.gate = None
        attempt = {"request_id": active.request_id, "started": _iso(active.started), "rerun": job.rerun,
                   "outcome": f"HTTP {result.response_status}" if result.response_status else result.error}
        try:
            await self.store.run(lambda s: s.finish(
                job.id, result.status, now(), response_status=result.response_status,
                response_body=result.response_body, error=result.error, attempt=attempt))
        except Exception as e:  # the job stays `running` in the table: a restart runs it once more
            logger.error("llm-proxy jobs: cannot store the end of job %s: %s", job.id, e)
            self.active.pop(job.id, None)
            return
        self.active.pop(job.id, None)
        self._wake.set()
        await self.finished(job.id)

    def _client(self, proxy: str | None) -> httpx.AsyncClient:
        client = self._clients.get(proxy)
        if client is None:
            client = self._clients[proxy] = httpx.AsyncClient(
                proxy=proxy, trust_env=False, follow_redirects=False,
                timeout=httpx.Timeout(JOB_TIMEOUT, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        return client

    async def _send(self, job: JobRow, request: Request) -> Result:
        headers = [*request.headers, ("x-llm-proxy-job", self.marker(job.id))]
        try:
            response = await self._client(request.proxy).request(job.method, request.url, headers=headers,
                                                                 content=request.body)
        except httpx.HTTPError as e:
            return Result("failed", error=f"the call did not complete: {type(e).__name__}: {e}".rstrip(": "))
        body = response.content
        if 200 <= response.status_code < 300:
            return Result("completed", response.status_code, body)
        return Result("failed", response.status_code, body, f"HTTP {response.status_code}")


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
