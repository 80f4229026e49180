"""PostgreSQL sink: COPY each batch in; duplicates skipped through a staging table.

COPY is the fastest way in. A batch that may repeat rows (a journal replay,
or a retry after a lost commit) is copied into a temporary staging table and
inserted with ON CONFLICT DO NOTHING instead, so no row is ever stored twice.

Large bodies are stored as parts by hash (bodies.py): the parts the writer has not
sent today are copied into a staging table and inserted ON CONFLICT, in the same
transaction as the rows that reference them, so a row never points at a part
that is not there. The monthly partitions are made ahead here too (partitions.py).

Nothing here may wait forever: a database that accepts TCP and never answers
would stall the writer thread while rows pile up. Connecting is bounded by
`connect_timeout`; statements by the server's statement_timeout and
lock_timeout, and, for a server that no longer answers at all, by a watchdog
that shuts the connection's socket down once `io_timeout` has passed, which
fails the statement with an OperationalError (a transient error: the writer
journals and reconnects).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..record import COLUMNS
from .bodies import KnownParts, PartCache, Prepared, prepare
from .errors import summarize
from .partitions import ensure_ahead, month_start, partitioned
from .schema import bodies_table, schema_for

logger = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x6C6C6D70  # "llmp": serialises concurrent start-ups applying the DDL
PARTITION_LOCK_TIMEOUT = 2.0  # seconds making a partition may wait for the parent table's lock
PARTITION_RETRY = 600  # seconds before trying again after that failed
BODY_INDEXES = (COLUMNS.index("request_body"), COLUMNS.index("response_body"))


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, str):
        # Guarded replaces: most values need none, and str.translate with a table is ~70x slower.
        if "\\" in value:
            value = value.replace("\\", "\\\\")
        if "\t" in value:
            value = value.replace("\t", "\\t")
        if "\n" in value:
            value = value.replace("\n", "\\n")
        if "\r" in value:
            value = value.replace("\r", "\\r")
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # int, Decimal: exact


def copy_text(rows: Sequence[Sequence[Any]]) -> bytes:
    """Rows in COPY's text format, built in one go: several times faster than write_row per row."""
    return "".join("\t".join(map(_copy_field, row)) + "\n" for row in rows).encode()


class PostgresSink:
    def __init__(self, url: str, table: str, *, connect_timeout: int = 5, io_timeout: float = 60.0) -> None:
        self.url = url
        self.table = table
        # The URL's own connect_timeout, if it has one, wins.
        self.connect_timeout = int(conninfo_to_dict(url).get("connect_timeout") or connect_timeout)
        self.io_timeout = io_timeout
        self._conn: psycopg.Connection | None = None
        self._watch_lock = threading.Lock()
        self._stage = f"{table}_stage"
        columns = ", ".join(COLUMNS)
        self._copy_sql = f"COPY {self._stage} ({columns}) FROM STDIN"
        self._direct_sql = f"COPY {table} ({columns}) FROM STDIN"
        self._insert_sql = (
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {self._stage} "
            "ON CONFLICT DO NOTHING"  # (request_id, ts) on a partitioned table, request_id on an older one
        )
        self._bodies = bodies_table(table)
        self._parts_stage = f"{self._bodies}_stage"
        self._parts_copy_sql = f"COPY {self._parts_stage} (hash, data, seen) FROM STDIN"
        # Sorted by hash: concurrent proxies lock the same parts in one order, never deadlocking.
        self._parts_insert_sql = (
            f"INSERT INTO {self._bodies} AS b (hash, data, seen) SELECT hash, data, seen FROM {self._parts_stage} "
            "ORDER BY hash ON CONFLICT (hash) DO UPDATE SET seen = EXCLUDED.seen WHERE b.seen < EXCLUDED.seen"
        )
        self.parts = PartCache()
        self.known = KnownParts()  # turns seen lately: recognised again without a parse
        self.partitioned = False
        self._month: datetime | None = None  # the month whose partitions were last made ahead
        self._ahead_retry = 0.0  # monotonic time before which making them is not tried again

    def connect(self) -> None:
        """Open the connection, apply schema.sql, prepare the staging table."""
        self.close()
        conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout, application_name="llm-proxy")
        timeout_ms = max(1, int(self.io_timeout * 1000))
        try:
            with self._deadline(conn):
                conn.execute(f"SET statement_timeout = {timeout_ms}")
                conn.execute(f"SET lock_timeout = {timeout_ms}")
                conn.commit()  # session settings: they outlive this transaction
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(schema_for(self.table).encode())
                # Only the copied columns, no defaults: the stage must not depend on the table's sequence.
                conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} ON COMMIT DELETE ROWS AS "
                    f"SELECT {', '.join(COLUMNS)} FROM {self.table} WITH NO DATA"
                )
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {self._parts_stage} "
                             "(hash bytea, data text, seen date) ON COMMIT DELETE ROWS")
                conn.commit()
                self.partitioned = partitioned(conn, self.table)
                conn.commit()
                if not self.partitioned:
                    logger.info("llm-proxy: table %s is not partitioned (made by an older version); it works as "
                                "it is, `llm-proxy db migrate` converts it", self.table)
                self._month = None
                self._ahead(conn)
        except BaseException:
            conn.close()
            raise
        self.parts.clear()  # what this connection's database holds is not known: send every part once
        self._conn = conn

    def _ahead(self, conn: psycopg.Connection) -> None:
        """Make this month's and next month's partitions, once per month.

        Creating a partition locks the parent table: with a short lock timeout, so that a long
        report never holds the writer (and every writer queued behind it) up. A failure only
        logs and tries again later: until then rows go to the default partition, which takes
        any row."""
        if not self.partitioned:
            return
        now = datetime.now(UTC)
        month = month_start(now)
        if month == self._month or time.monotonic() < self._ahead_retry:
            return
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(f"SET LOCAL lock_timeout = {int(PARTITION_LOCK_TIMEOUT * 1000)}")
                made = ensure_ahead(conn, self.table, now)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if not isinstance(e, psycopg.errors.LockNotAvailable):
                raise  # the connection is in trouble: the writer's own handling
            self._ahead_failed(e)
            return
        except psycopg.Error as e:
            self._ahead_failed(e)
            return
        if made:
            logger.info("llm-proxy made the partitions %s of %s", ", ".join(made), self.table)
        self._month = month

    def _ahead_failed(self, error: Exception) -> None:
        self._ahead_retry = time.monotonic() + PARTITION_RETRY
        logger.warning("llm-proxy could not make next month's partition of %s yet (%s); rows go to its default "
                       "partition meanwhile, trying again in %ds", self.table, summarize(error), PARTITION_RETRY)

    @contextlib.contextmanager
    def _deadline(self, conn: psycopg.Connection) -> Iterator[None]:
        """Shut the connection's socket down if the block is still running after io_timeout.

        The server's statement_timeout cannot help when the server (or the network path to
        it) no longer answers; a blocked read in libpq would wait forever. Shutting the
        socket down (on a duplicate of its descriptor: the connection itself is closed by
        its owner, later, in this thread) wakes that read with an error."""
        fd = conn.fileno()
        armed = [True]

        def fire() -> None:
            with self._watch_lock:
                if not armed[0]:
                    return
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            logger.warning("llm-proxy: the database did not answer within %gs; connection dropped", self.io_timeout)

        timer = threading.Timer(self.io_timeout, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            with self._watch_lock:
                armed[0] = False
            timer.cancel()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def write(self, rows: Sequence[Sequence[Any]], *, replay: bool = False) -> None:
        """One batch, one transaction; raises psycopg.Error on any failure.

        New rows are copied straight into the table. A batch that may hold rows
        already stored (a journal replay, or a retry after a commit whose answer
        was lost) goes through the staging table and skips the duplicates.
        """
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        today = datetime.now(UTC).date()
        batch = prepare(rows, BODY_INDEXES, self.parts, today, self.known)
        data = copy_text(batch.rows)
        try:
            with self._deadline(self._conn):
                self._ahead(self._conn)
                self._copy(data, self._parts_text(batch, today), replay)
        except BaseException:
            self.close()
            raise
        self.parts.stored(batch.parts, today)  # committed: tomorrow they are sent once more

    @staticmethod
    def _parts_text(batch: Prepared, today: date) -> bytes | None:
        if not batch.parts:
            return None
        return copy_text([("\\x" + digest.hex(), data, today) for digest, data in batch.parts.items()])

    def _copy(self, data: bytes, parts: bytes | None, replay: bool) -> None:
        assert self._conn is not None
        if not replay:
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    self._copy_parts(cur, parts)
                    with cur.copy(self._direct_sql) as copy:
                        copy.write(data)
                return
            except psycopg.errors.UniqueViolation:
                pass  # some rows are there already: the idempotent path below
        with self._conn.transaction(), self._conn.cursor() as cur:
            self._copy_parts(cur, parts)
            with cur.copy(self._copy_sql) as copy:
                copy.write(data)
            cur.execute(self._insert_sql)

    def _copy_parts(self, cur: psycopg.Cursor[Any], parts: bytes | None) -> None:
        if parts is None:
            return
        with cur.copy(self._parts_copy_sql) as copy:
            copy.write(parts)
        cur.execute(self._parts_insert_sql)

    def spend_since(self, windows: Mapping[str, datetime]) -> dict[str, Decimal]:
        """Sum of cost_usd per key since each key's window start."""
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        by_start: dict[datetime, list[str]] = {}
        for name, start in windows.items():
            by_start.setdefault(start, []).append(name)
        sums: dict[str, Decimal] = {}
        try:
            with self._deadline(self._conn), self._conn.transaction():
                for start, names in by_start.items():
                    rows = self._conn.execute(
                        f"SELECT key_id, COALESCE(sum(cost_usd), 0) FROM {self.table} "
                        "WHERE ts >= %s AND key_id = ANY(%s) GROUP BY key_id",
                        (start, names),
                    ).fetchall()
                    sums.update({name: Decimal(total) for name, total in rows})
        except BaseException:
            self.close()
            raise
        return sums

    @staticmethod
    def is_transient(error: Exception) -> bool:
        """Worth retrying (connection trouble, deadlock, serialization failure, timeout), or a bad row."""
        # OperationalError covers connection loss and TransactionRollback (deadlock, serialization).
        return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
