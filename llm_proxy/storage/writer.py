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
Without a journal (it could not be opened: another proxy holds it, or no
permission), the proxy keeps serving and rows wait in memory; health says
"degraded" with the reason.

Memory is bounded in bytes (`max_queue_bytes`, rows queued or held, each
estimated on `put` from its bodies' lengths) as well as in rows: beyond
either, new rows are dropped, counted and logged once. A dropped or refused
row still counts towards its key's budget (SpendBook.dropped): the provider
served the call.

The thread must outlive anything a row holds: an unexpected error in its
loop is logged once per kind (with a count), the rows in hand are stored one
by one or counted as dropped, and the loop goes on. Health reports "failing"
if the thread is gone all the same.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ..limits.budget import SpendBook
from ..record import COLUMNS, JSON_COLUMNS, Record
from .errors import summarize
from .journal import Journal
from .rows import row_values

logger = logging.getLogger(__name__)

_KEY, _COST, _TS = COLUMNS.index("key_id"), COLUMNS.index("cost_usd"), COLUMNS.index("ts")
_BODY_INDEXES = tuple(COLUMNS.index(c) for c in sorted(JSON_COLUMNS))
TRANSIENT_RETRIES = 3
# What a row costs in memory besides its bodies: the Record, its other fields, the row
# built from it, the queue's bookkeeping. Measured at a few hundred bytes; rounded up.
ROW_OVERHEAD_BYTES = 1024
_WALK_NODES = 64  # a body the proxy built (a rebuilt stream): how far its size is walked on put


def estimate_bytes(record: Record) -> int:
    """Memory a queued Record holds, cheaply: bodies' lengths plus a constant. No serialisation:
    this runs on the event loop, once per call."""
    size = ROW_OVERHEAD_BYTES
    for body in (record.request_body, record.response_body, record.attempts):
        if body is None:
            continue
        if isinstance(body, (bytes, str)):
            size += len(body)
        else:
            size += _object_bytes(body)
    return size


def _object_bytes(value: Any) -> int:
    """A walk of at most _WALK_NODES nodes: strings by length, the rest by a flat guess."""
    size, stack, seen = 0, [value], 0
    while stack and seen < _WALK_NODES:
        node = stack.pop()
        seen += 1
        if isinstance(node, (str, bytes)):
            size += len(node) + 16
        elif isinstance(node, dict):
            size += 64 + 16 * len(node)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            size += 64 + 8 * len(node)
            stack.extend(node)
        else:
            size += 32
    return size + 256 * len(stack)  # nodes left unwalked


def row_bytes(row: Sequence[Any]) -> int:
    """The same estimate for a row built from a Record (rows held in memory)."""
    size = ROW_OVERHEAD_BYTES
    for index in _BODY_INDEXES:
        body = row[index]
        if isinstance(body, str):
            size += len(body)
    return size


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
    internal_errors: int = 0  # unexpected errors in the writer's own loop (it carried on)
    database: str = "connecting"  # connecting | up | down | stopped
    last_error: str | None = None


def _spend_items(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, Any]]:
    return [(row[_KEY], row[_COST], row[_TS]) for row in rows]


class Writer:
    def __init__(
        self,
        sink: Sink,
        description: str,
        *,
        journal: Journal | None = None,
        body_max_bytes: int | None = 1 << 20,
        max_queue: int = 100_000,
        max_queue_bytes: int | None = 256 << 20,
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
        # Bytes of rows in memory (queued, in the batch in hand, or held) beyond which new rows are dropped.
        self.max_queue_bytes = max_queue_bytes
        self.journal_problem: str | None = None  # why there is no journal, when it could not be opened
        self._spend_read_at: float | None = None
        self._queue: queue.Queue[tuple[int, Record]] = queue.Queue(maxsize=max_queue)
        # Queued bytes = put in - taken out; each counter has a single writer (event loop, writer thread).
        self._bytes_in = 0
        self._bytes_out = 0
        self._held: list[list[Any]] = []  # rows waiting for the database when the journal cannot take them
        self._held_bytes = 0
        self._batch: list[tuple[int, Record]] = []  # taken from the queue, not yet stored
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-proxy-writer", daemon=True)
        self._full_warned = False
        self._bytes_warned = False
        self._kinds: Counter[str] = Counter()  # log lines said once per kind, then counted
        self._consecutive_errors = 0
        self._backoff = 0.2
        self._next_connect = 0.0

    # --- called from mitmproxy's event loop -------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def put(self, record: Record) -> None:
        """Hand a row to the writer; never blocks, never raises."""
        if self.spend is not None:
            self.spend.queued(record.key_id, record.cost_usd)
        size = estimate_bytes(record)
        if self.max_queue_bytes is not None and self.memory_bytes + size > self.max_queue_bytes:
            self._refuse(record)
            if not self._bytes_warned:
                self._bytes_warned = True
                logger.warning("llm-proxy writer holds %d MB of rows, its limit (database down or slow, no "
                               "journal?): dropping new rows; their cost still counts towards budgets",
                               self.max_queue_bytes >> 20)
            return
        self._bytes_in += size
        try:
            self._queue.put_nowait((size, record))
        except queue.Full:
            self._bytes_in -= size
            self._refuse(record)
            if not self._full_warned:
                self._full_warned = True
                logger.warning("llm-proxy writer queue is full (database down and no journal?): dropping new rows")

    def _refuse(self, record: Record) -> None:
        self.stats.rows_dropped += 1
        if self.spend is not None:
            self.spend.dropped([(record.key_id, record.cost_usd, record.ts)])

    @property
    def queue_depth(self) -> int:
        """Rows neither in the database nor in the journal yet."""
        return self._queue.qsize() + len(self._batch) + len(self._held)

    @property
    def memory_bytes(self) -> int:
        """Estimated bytes of rows in memory: queued, in the batch in hand, held."""
        return self._bytes_in - self._bytes_out + self._held_bytes

    @property
    def alive(self) -> bool:
        """The writer thread was started and still runs: rows are being stored."""
        return self._thread.is_alive()

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
        try:
            self._open_journal()
            self._connect()
            while self._turn_guarded():
                pass
        finally:
            self._close()

    def _open_journal(self) -> None:
        if self.journal is None:
            return
        try:
            self.journal.open()
        except Exception as e:  # locked by another proxy, no permission, not a directory
            bound = f"up to {self.max_queue_bytes >> 20} MB" if self.max_queue_bytes is not None else "unbounded"
            self.journal_problem = str(e) or type(e).__name__
            # A warning, not an error: mitmdump exits on an error logged during start-up, and a proxy
            # without a journal still serves and stores rows (health says "degraded").
            logger.warning("llm-proxy runs without a journal (%s): while the database is unreachable, rows wait "
                         "in memory (%s) and are lost if the proxy stops", self.journal_problem, bound)
            self.journal = None

    def _close(self) -> None:
        try:
            self.sink.close()
        except Exception as e:
            logger.warning("llm-proxy could not close %s cleanly (%s)", self.description, summarize(e))
        if self.journal is not None:
            self.journal.close()

    def _turn_guarded(self) -> bool:
        """One turn of the loop; an unexpected error is logged, the rows in hand saved, and the
        loop goes on (at shutdown, it gives up after a few errors in a row)."""
        try:
            going = self._turn()
        except Exception as e:
            self._consecutive_errors += 1
            self.stats.internal_errors += 1
            self._log_kind(f"internal {type(e).__name__}", logging.ERROR,
                           "llm-proxy writer hit an unexpected error and carries on: %s (at %s)",
                           summarize(e), _where(e))
            self._rescue_batch()
            if self._stop.is_set():
                return self._consecutive_errors < 3
            self._stop.wait(min(0.05 * self._consecutive_errors, 1.0))  # no busy loop on a repeating error
            return True
        self._consecutive_errors = 0
        return going

    def _turn(self) -> bool:
        """Take a batch, store it, reconnect or replay as due; False once stopped and done."""
        stopping = self._stop.is_set()
        self._refresh_spend()
        backlog = self._backlog()
        records = self._collect(block=not stopping and not (backlog and self.stats.database == "up"))
        if records:
            self._store([row_values(r, body_max_bytes=self.body_max_bytes) for _, r in records])
            self._release_batch()
        elif stopping and not self._held:
            return False
        if self.stats.database != "up" and time.monotonic() >= self._next_connect:
            self._connect()
        if self.stats.database == "up" and backlog:
            self._drain_backlog()
        elif stopping and self.stats.database != "up" and not records:
            return False  # database down at shutdown: the journal keeps the rest
        return True

    def _release_batch(self) -> None:
        self._bytes_out += sum(size for size, _ in self._batch)
        self._batch = []

    def _rescue_batch(self) -> None:
        """After an unexpected error: store the rows in hand one by one; a row that fails again
        is counted as dropped (its spend still counts), never silently gone."""
        batch = self._batch
        for _, record in batch:
            try:
                self._store([row_values(record, body_max_bytes=self.body_max_bytes)])
            except Exception as e:
                self.stats.rows_dropped += 1
                if self.spend is not None:
                    self.spend.dropped([(record.key_id, record.cost_usd, record.ts)])
                self._log_kind(f"lost {type(e).__name__}", logging.ERROR,
                               "llm-proxy could not store a row and dropped it: %s (at %s)", summarize(e), _where(e))
        self._release_batch()

    def _log_kind(self, kind: str, level: int, message: str, *args: Any) -> None:
        """Log the first occurrence of a kind, then the 10th, 100th...: a repeating error must
        not flood the log, but its count must show."""
        self._kinds[kind] += 1
        count = self._kinds[kind]
        if count == 1 or (count >= 10 and str(count).strip("0") == "1"):
            logger.log(level, message + (f" [{count} times so far]" if count > 1 else ""), *args)

    def _backlog(self) -> bool:
        return bool(self._held) or (self.journal is not None and self.journal.pending)

    def _collect(self, *, block: bool) -> list[Record]:
        """Take a batch: wait up to flush_interval for the first record, then linger as long
        again before taking the rest, so a steady trickle of calls makes a few large
        transactions a second rather than one per call. The linger is a plain sleep, not a
        wait on the queue: waking this thread for every put would cost the event loop the
        GIL once per call."""
        records: list[tuple[int, Record]] = []
        self._batch = records
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
        """Rows the database cannot take now: to the journal, else held in memory. Rows in
        memory were admitted under the byte bound on put, so holding them adds nothing."""
        if self.journal is not None:
            try:
                accepted = self.journal.append(rows)
            except OSError as e:
                self._log_kind("journal write", logging.ERROR,
                               "llm-proxy cannot write its journal (%s): rows wait in memory", summarize(e))
            else:
                self.stats.rows_journaled += accepted
                self._dropped(rows[accepted:])  # the journal is at its cap
                return
        room = self._queue.maxsize - len(self._held)
        kept = rows[:room]
        self._held.extend(kept)
        self._held_bytes += sum(map(row_bytes, kept))
        self._dropped(rows[room:])

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
        self.stats.last_error = summarize(error)
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
                reason = self.stats.last_error = summarize(e)
                self.stats.dead_letters += 1
                kept = self.journal is not None and self.journal.dead_letter(row, reason)
                where = f"set aside in {self.journal.directory}" if kept and self.journal else "not kept (no journal)"
                self._log_kind(f"refused {reason}", logging.ERROR,
                               "llm-proxy: the database refuses a row (request %s), %s: %s", row[0], where, reason)
                if self.spend is not None:
                    self.spend.dropped(_spend_items([row]))
            else:
                self._written([row])

    def _drain_backlog(self) -> None:
        """Replay held rows, then journal segments, oldest first, while the database takes them."""
        while self._held:
            rows = self._held[:self.batch_size]
            if not self._write(rows, replay=True):
                return
            del self._held[:len(rows)]
            self._held_bytes -= sum(map(row_bytes, rows))
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
        message = summarize(error)
        if self.stats.database != "down" or message != self.stats.last_error:
            where = f"the journal {self.journal.directory}" if self.journal is not None else "memory"
            logger.warning("llm-proxy cannot write to %s (%s); keeping rows in %s and retrying",
                           self.description, message, where)
        self.stats.database = "down"
        self.stats.last_error = message
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)


def _where(error: BaseException) -> str:
    """file:line where an error was raised: enough to report a bug, and no values from the row."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
