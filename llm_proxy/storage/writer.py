"""The writer thread: owns the database connection, batches rows, loses none of them.

Hooks call `put`, which never blocks and never raises. Everything slow
(serialising bodies, connecting, COPY, the journal's fsync) happens here.

Where a batch goes:
- database up and no backlog: written in one transaction; a deadlock or
  serialization failure is retried at once; a batch the database refuses
  because of one bad row is written row by row and the bad rows go to the
  dead-letter file with the reason;
- database down, slow to connect, or a backlog in the journal: appended to the
  journal (fsync per batch), so memory stays bounded and order is kept;
- the journal is replayed, oldest first, as soon as the database is back.
Without a journal (it could not be opened), rows wait in the bounded queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ..limits.budget import SpendBook
from ..record import COLUMNS, Record
from .journal import Journal, JournalLocked
from .rows import row_values

logger = logging.getLogger(__name__)

_KEY, _COST = COLUMNS.index("key_id"), COLUMNS.index("cost_usd")
TRANSIENT_RETRIES = 3


class Sink(Protocol):
    def connect(self) -> None: ...
    def write(self, rows: Sequence[Sequence[Any]], *, replay: bool = False) -> None: ...
    def spend_since(self, windows: Mapping[str, datetime]) -> Mapping[str, Decimal]: ...
    def is_transient(self, error: Exception) -> bool: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class WriterStats:
    rows_written: int = 0
    rows_journaled: int = 0
    rows_dropped: int = 0
    dead_letters: int = 0
    batches_failed: int = 0
    database: str = "connecting"  # connecting | up | down | stopped
    last_error: str | None = None


def _spend_items(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, Any]]:
    return [(row[_KEY], row[_COST]) for row in rows]


class Writer:
    def __init__(
        self,
        sink: Sink,
        description: str,
        *,
        journal: Journal | None = None,
        body_max_bytes: int | None = 1 << 20,
        max_queue: int = 100_000,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        max_backoff: float = 5.0,
        spend: SpendBook | None = None,
        spend_refresh: float | None = None,
    ) -> None:
        self.sink = sink
        self.description = description
        self.journal = journal
        self.body_max_bytes = body_max_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.stats = WriterStats()
        self.spend = spend
        # Seconds between re-reads of budget spend (other proxies' rows); None: start-up only.
        self.spend_refresh = spend_refresh
        self._spend_read_at: float | None = None
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=max_queue)
        self._held: list[list[Any]] = []  # rows waiting for the database when there is no journal
        self._batch: list[Record] = []  # taken from the queue, not yet stored
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-proxy-writer", daemon=True)
        self._full_warned = False
        self._backoff = 0.2
        self._next_connect = 0.0

    # --- called from mitmproxy's event loop -------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put(self, record: Record) -> None:
        """Hand a row to the writer; never blocks, never raises."""
        if self.spend is not None:
            self.spend.queued(record.key_id, record.cost_usd)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.stats.rows_dropped += 1
            if self.spend is not None:
                self.spend.dropped([(record.key_id, record.cost_usd)])
            if not self._full_warned:
                self._full_warned = True
                logger.warning("llm-proxy writer queue is full (database down and no journal?): dropping new rows")

    @property
    def queue_depth(self) -> int:
        """Rows neither in the database nor in the journal yet."""
        return self._queue.qsize() + len(self._batch) + len(self._held)

    @property
    def journal_bytes(self) -> int:
        return self.journal.size_bytes if self.journal is not None else 0

    def stop(self, timeout: float = 10.0) -> None:
        """Write or journal everything queued (within `timeout`), then stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = self.queue_depth
        if left:
            logger.warning("llm-proxy writer stopped with %d rows unwritten (%s)", left, self.stats.last_error)
        self.stats.database = "stopped"

    # --- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        if self.journal is not None:
            try:
                self.journal.open()
            except (JournalLocked, OSError) as e:
                logger.error("llm-proxy runs without a journal: %s", e)
                self.journal = None
        self._connect()
        try:
            while True:
                stopping = self._stop.is_set()
                self._refresh_spend()
                backlog = self._backlog()
                records = self._collect(block=not stopping and not (backlog and self.stats.database == "up"))
                if records:
                    self._store([row_values(r, body_max_bytes=self.body_max_bytes) for r in records])
                    self._batch = []
                elif stopping and not self._held:
                    break
                if self.stats.database != "up" and time.monotonic() >= self._next_connect:
                    self._connect()
                if self.stats.database == "up" and backlog:
                    self._drain_backlog()
                elif stopping and self.stats.database != "up" and not records:
                    break  # database down at shutdown: the journal keeps the rest
        finally:
            self.sink.close()
            if self.journal is not None:
                self.journal.close()

    def _backlog(self) -> bool:
        return bool(self._held) or (self.journal is not None and self.journal.pending)

    def _collect(self, *, block: bool) -> list[Record]:
        """Take a batch: wait up to flush_interval for the first record, then linger as long
        again before taking the rest, so a steady trickle of calls makes a few large
        transactions a second rather than one per call. The linger is a plain sleep, not a
        wait on the queue: waking this thread for every put would cost the event loop the
        GIL once per call."""
        records = self._batch = []
        try:
            if block:
                records.append(self._queue.get(timeout=self.flush_interval))
                if self._queue.qsize() < self.batch_size:
                    self._stop.wait(self.flush_interval)
            while len(records) < self.batch_size:
                records.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return records

    def _store(self, rows: list[list[Any]]) -> None:
        if self.stats.database == "up" and not self._backlog() and self._write(rows):
            return
        self._keep(rows)

    def _keep(self, rows: list[list[Any]]) -> None:
        """Rows the database cannot take now: to the journal, else held in memory."""
        if self.journal is None:
            room = self._queue.maxsize - len(self._held)
            self._held.extend(rows[:room])
            self._dropped(rows[room:])
            return
        try:
            accepted = self.journal.append(rows)
        except OSError as e:
            logger.error("llm-proxy cannot write its journal (%s): %d rows dropped", e, len(rows))
            accepted = 0
        self.stats.rows_journaled += accepted
        self._dropped(rows[accepted:])

    def _write(self, rows: list[list[Any]], *, replay: bool = False) -> bool:
        """Write one batch; True when every row is in the database (or set aside as bad)."""
        for retry in range(TRANSIENT_RETRIES):
            try:
                self.sink.write(rows, replay=replay or retry > 0)
            except Exception as e:
                self.stats.batches_failed += 1
                if not self.sink.is_transient(e):
                    self._write_singly(rows)
                    return True
                if not self._still_up(e):
                    return False
                time.sleep(0.05 * 2 ** retry)  # deadlock, serialization failure: again, at once
                continue
            self._written(rows)
            return True
        return False

    def _still_up(self, error: Exception) -> bool:
        """After a transient error: is the database reachable? Marks it down if not."""
        try:
            self.sink.connect()
        except Exception as e:
            self._down(e)
            return False
        self.stats.last_error = f"{type(error).__name__}: {error}".strip()
        return True

    def _write_singly(self, rows: list[list[Any]]) -> None:
        """A batch the database refused: find the bad rows, set them aside, keep the rest."""
        for index, row in enumerate(rows):
            try:
                self.sink.write([row], replay=True)
            except Exception as e:
                if self.sink.is_transient(e):
                    self._down(e)
                    self._keep(rows[index:])
                    return
                reason = self.stats.last_error = f"{type(e).__name__}: {e}".strip()
                logger.error("llm-proxy set aside row %s that the database refuses: %s", row[0], reason)
                self.stats.dead_letters += 1
                if self.journal is not None:
                    self.journal.dead_letter(row, reason)
                if self.spend is not None:
                    self.spend.dropped(_spend_items([row]))
            else:
                self._written([row])

    def _drain_backlog(self) -> None:
        """Replay held rows, then journal segments, oldest first, while the database takes them."""
        if self._held:
            held, self._held = self._held, []
            for start in range(0, len(held), self.batch_size):
                if not self._write(held[start:start + self.batch_size], replay=True):
                    self._held = held[start:] + self._held
                    return
        if self.journal is None:
            return
        for segment in self.journal.segments():
            for rows in self.journal.read(segment, self.batch_size):
                if not self._write(rows, replay=True):
                    return  # down again: the segment stays and is replayed again later (idempotent)
                self.stats.rows_journaled -= min(self.stats.rows_journaled, len(rows))
            self.journal.done(segment)
            if self._queue.qsize() > self.batch_size:
                return  # let new rows in (into the journal, keeping order) before the next segment
        logger.info("llm-proxy journal replayed into %s", self.description)

    def _written(self, rows: list[list[Any]]) -> None:
        self.stats.rows_written += len(rows)
        if self.spend is not None:
            self.spend.written(_spend_items(rows))

    def _dropped(self, rows: list[list[Any]]) -> None:
        if rows:
            self.stats.rows_dropped += len(rows)
            if self.spend is not None:
                self.spend.dropped(_spend_items(rows))

    def _connect(self) -> bool:
        try:
            self.sink.connect()
        except Exception as e:
            self._down(e)
            return False
        if self.stats.database != "up":
            logger.info("llm-proxy writing rows to %s", self.description)
        self.stats.database = "up"
        self._backoff = 0.2
        return True

    def _refresh_spend(self) -> None:
        """Re-read budget spend at start-up and then every spend_refresh seconds."""
        if self.spend is None or self.stats.database != "up":
            return
        now = time.monotonic()
        if not self.spend.stale and self._spend_read_at is not None and (
            self.spend_refresh is None or now - self._spend_read_at < self.spend_refresh
        ):
            return
        try:
            self.spend.refresh(self.sink.spend_since)
        except Exception as e:
            self._down(e)
            return
        self._spend_read_at = now

    def _down(self, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}".strip()
        if self.stats.database != "down" or message != self.stats.last_error:
            where = f"the journal {self.journal.directory}" if self.journal is not None else "memory"
            logger.warning("llm-proxy cannot write to %s (%s); keeping rows in %s and retrying",
                           self.description, message, where)
        self.stats.database = "down"
        self.stats.last_error = message
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)
