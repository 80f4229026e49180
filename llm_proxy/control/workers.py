"""Where the control plane's reports run: a process of their own, and threads for small work.

A report is database time *and* Python time: fetching tens of thousands of groups,
adding kept sums, writing JSON. In the proxy's process that Python time holds the GIL
the event loop needs, so a dashboard refreshing every second took ~10% of a busy
proxy's throughput even though no hook ever waited for it. In a process of its own
(niced, with its own connections and its own kept sums of closed days) a report can
only take a core the proxy does not use; the event loop waits for nothing but a
pickled answer. Keys-file I/O stays on threads: keys are the proxy's own state.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TypeVar

from ..storage.dsn import Database, check_table_name, parse_db_url
from ..storage.errors import summarize
from .reports import ClosedDays, Reports

logger = logging.getLogger(__name__)

T = TypeVar("T")
WORKERS = 2
TIMEOUT = 30.0

_reports: Reports | None = None  # in a report process: its one Reports (its own connection)


class ReportFailed(Exception):
    """A report's error, as the report process could describe it (its own exception may not pickle)."""


class ApiTimeout(Exception):
    """A report or operation that took longer than the control plane waits."""


def _start(database: Database, table: str, timeout: float) -> None:
    """A report process's start: lower priority, its Reports, and an exit with its parent."""
    global _reports
    try:
        os.nice(10)
    except OSError:
        pass
    _reports = Reports(database, table, statement_timeout=timeout, ensure=True, closed=ClosedDays())
    parent = os.getppid()

    def watch() -> None:  # a proxy killed with -9 leaves no one to shut the pool down
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="llm-proxy-reports-parent", daemon=True).start()


def _call(method: str, args: tuple[Any, ...]) -> Any:
    assert _reports is not None
    try:
        return getattr(_reports, method)(*args)
    except Exception as e:
        raise ReportFailed(summarize(e)) from None


class ReportWorkers:
    """Reports in worker processes (each with its own connection); other slow work on threads."""

    def __init__(self, url: str, table: str, *, workers: int = WORKERS, timeout: float = TIMEOUT) -> None:
        self.database = parse_db_url(url)
        self.table = check_table_name(table)
        self.timeout = timeout
        self._workers = workers
        self._procs = self._new_pool()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="llm-proxy-control")

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, never fork: the proxy's process has threads (writer, relay) a fork would copy mid-lock.
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(self.database, self.table, self.timeout))

    def warm_up(self) -> None:
        """Start the processes and connect (and build the rollups) now, not at the first report."""
        for _ in range(self._workers):
            self._procs.submit(_call, "connect", ()).add_done_callback(_log_warm_up)

    async def run(self, method: str, *args: Any) -> Any:
        """`Reports.<method>(*args)` in a report process."""
        try:
            future = self._procs.submit(_call, method, args)
        except BrokenProcessPool:  # a report process died (killed, out of memory): start afresh
            logger.warning("llm-proxy report processes stopped; starting new ones")
            self._procs = self._new_pool()
            future = self._procs.submit(_call, method, args)
        return await self._wait(future, "report")

    async def call(self, work: Callable[[], T]) -> T:
        """Other slow work (keys file I/O) on threads, with the same timeout."""
        return await self._wait(self._threads.submit(work), "operation")

    async def _wait(self, future: Future[T], what: str) -> T:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise ApiTimeout(f"the {what} took longer than {self.timeout:g}s") from None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._procs.shutdown(wait=False, cancel_futures=True)


def _log_warm_up(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None:
        logger.warning("llm-proxy reports cannot reach the database yet: %s", error)
