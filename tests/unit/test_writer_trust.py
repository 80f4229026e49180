"""Trust the record: any row is storable, the writer thread outlives anything, health tells the
truth, errors never quote rows or passwords, lost rows still count as spend, memory is bounded
in bytes, and a database that never answers cannot stall the writer.

The PostgreSQL tests use the server at LLM_PROXY_TEST_PG, each in a table of its own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from llm_proxy import health
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.limits.budget import SpendBook
from llm_proxy.record import COLUMNS, Record
from llm_proxy.storage.dsn import parse_db_url
from llm_proxy.storage.errors import summarize
from llm_proxy.storage.journal import DEAD_LETTER, Journal
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.rows import REPLACED_NOTE, row_values, to_json
from llm_proxy.storage.sqlite import SqliteSink
from llm_proxy.storage.writer import Writer

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TS = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
MARKER = "PRIVATE-BODY-7f3a"  # must never appear in health, logs or dead-letter reasons


def record(request_id: str = "req-1", **kw) -> Record:
    values = dict(
        ts=TS, duration_ms=10, provider="openai", api="openai-chat", method="POST",
        path="/v1/chat/completions", model="gpt-4o-mini", key_id="team", status=200,
        input_tokens=10, output_tokens=2, total_tokens=12, cost_usd=Decimal("0.001"),
        request_body=b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        response_body={"choices": [{"message": {"content": "ok"}}]}, client_addr="127.0.0.1",
    )
    values.update(kw)
    return Record(request_id=request_id, **values)


def hostile(request_id: str) -> Record:
    """A row holding every kind of character the database refuses, as real clients can send."""
    return record(
        request_id,
        path=b"/v1/chat/completions/\xff".decode("utf-8", "surrogateescape"),
        model="gpt-4o-mini\ud800",
        request_body=b'{"model":"gpt-4o-mini","messages":[{"content":"a\\ud800 b\\udc80 c\\u0000"}]}',
        response_body={"choices": [{"message": {"content": "lone \udc80 here"}}]},
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def as_dict(values: list) -> dict:
    return dict(zip(COLUMNS, values))


# --- 1. any row is storable ---------------------------------------------------------------

def test_row_values_replace_what_the_database_refuses_and_say_where():
    row = as_dict(row_values(hostile("r1"), body_max_bytes=None))
    for column in ("path", "model", "request_body", "response_body", "error"):
        row[column].encode("utf-8")  # strict: no lone surrogate left anywhere
    assert row["path"] == "/v1/chat/completions/\ufffd"
    assert row["model"] == "gpt-4o-mini\ufffd"
    body = json.loads(row["request_body"])
    assert body["messages"][0]["content"] == "a\ufffd b\ufffd c\ufffd"
    assert json.loads(row["response_body"])["choices"][0]["message"]["content"] == "lone \ufffd here"
    assert row["error"] == REPLACED_NOTE + "path, model, request_body, response_body"


def test_the_note_is_appended_to_an_existing_error():
    row = as_dict(row_values(record(model="m\x00", error="HTTP 500: boom"), body_max_bytes=None))
    assert row["error"] == "HTTP 500: boom; " + REPLACED_NOTE + "model"


@pytest.mark.parametrize("text", [
    '{"e":"\\ud83d\\ude00"}',  # a surrogate pair: an emoji, stored as sent
    '{"e":"\\\\ud800"}',  # an escaped backslash, then the letters ud800: not an escape
    '{"e":"\\\\u0000 \\u00e9"}',
])
def test_well_formed_escapes_are_left_alone(text):
    row = as_dict(row_values(record(request_body=text.encode()), body_max_bytes=None))
    assert row["request_body"] == text and row["error"] is None


def test_a_truncated_body_with_lone_surrogates_is_storable():
    body = {"content": "\ud800" + "x" * 5000}
    text = to_json(body, 1024)
    text.encode("utf-8")
    assert json.loads(text)["truncated"] is True and "\\ud800" not in text


def test_journal_append_read_and_dead_letter_never_raise_on_lone_surrogates(tmp_path):
    journal = Journal(tmp_path / "j", 1 << 20)
    journal.open()
    hostile_record = record("raw", model="m\ud800", path="/p\udcff")
    raw = [getattr(hostile_record, c) for c in COLUMNS]
    raw[COLUMNS.index("request_body")] = '{"a":"\\udc80"}'
    raw[COLUMNS.index("response_body")] = None
    raw[COLUMNS.index("attempts")] = None
    assert journal.append([raw]) == 1
    [[row]] = list(journal.read(journal.segments()[0], 10))
    back = as_dict(row)
    assert back["model"] == "m\ufffd" and back["path"] == "/p\ufffd"  # storable when replayed
    assert back["request_body"] == '{"a":"\\ufffd"}'
    assert REPLACED_NOTE in back["error"]
    assert journal.dead_letter(raw, "ValueError: refused") is True
    letter = json.loads((tmp_path / "j" / DEAD_LETTER).read_text())
    assert letter["reason"] == "ValueError: refused" and letter["row"]["model"] == "m\ud800"
    journal.close()


def test_dead_letter_never_raises_even_when_it_cannot_write(tmp_path):
    journal = Journal(tmp_path / "gone", 1 << 20)  # never opened: the directory does not exist
    assert journal.dead_letter(["r"] + [None] * (len(COLUMNS) - 1), "x") is False


def test_sqlite_writer_stores_hostile_rows_and_stays_alive(tmp_path):
    path = tmp_path / "llm.db"
    writer = Writer(SqliteSink(str(path), "llm_requests"), "test", journal=Journal(tmp_path / "j", 1 << 20),
                    flush_interval=0.01)
    writer.start()
    writer.put(hostile("bad"))
    writer.put(record("good"))
    wait_until(lambda: writer.stats.rows_written == 2)
    assert writer.alive
    writer.stop(timeout=5)
    assert (writer.stats.dead_letters, writer.stats.rows_dropped) == (0, 0)
    conn = sqlite3.connect(path)
    stored = dict(conn.execute("SELECT request_id, error FROM llm_requests"))
    conn.close()
    assert stored == {"bad": REPLACED_NOTE + "path, model, request_body, response_body", "good": None}


class ExplodingBody:
    """A body whose serialisation fails: an unexpected error inside the writer's loop."""

    def __str__(self) -> str:
        raise RuntimeError("cannot serialise")


def test_an_unexpected_error_in_the_loop_does_not_kill_the_writer(tmp_path, caplog):
    path = tmp_path / "llm.db"
    writer = Writer(SqliteSink(str(path), "llm_requests"), "test", flush_interval=0.01)
    writer.start()
    for i in range(3):
        writer.put(record(f"before{i}"))
        writer.put(record(f"boom{i}", response_body={"x": ExplodingBody()}))
    wait_until(lambda: writer.stats.rows_written + writer.stats.rows_dropped == 6)
    writer.put(record("after"))
    wait_until(lambda: writer.stats.rows_written == 4)
    assert writer.alive
    writer.stop(timeout=5)
    assert writer.stats.rows_dropped == 3 and writer.stats.internal_errors >= 1
    lost = [r for r in caplog.records if "dropped it" in r.getMessage()]
    assert len(lost) == 1  # once per kind, not once per row
    assert "RuntimeError" in lost[0].getMessage() and "Traceback" not in caplog.text


# --- PostgreSQL --------------------------------------------------------------------------------

@pytest.fixture
def pg_table() -> Iterator[str]:
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is needed ({PG_URL}): {e}", pytrace=False)
    name = "llmp_trust_" + secrets.token_hex(4)
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_bodies CASCADE")


def pg_rows(table: str) -> dict[str, dict]:
    with psycopg.connect(PG_URL) as conn:
        cur = conn.execute(f"SELECT request_id, path, model, error, request_body, response_body FROM {table}")
        return {r[0]: dict(zip(("path", "model", "error", "request_body", "response_body"), r[1:]))
                for r in cur.fetchall()}


def test_postgres_writer_stores_hostile_rows_by_copy_and_from_the_journal(pg_table, tmp_path):
    journal = Journal(tmp_path / "j", 1 << 20)
    writer = Writer(PostgresSink(PG_URL, pg_table), "pg", journal=journal, flush_interval=0.01)
    writer.start()
    wait_until(lambda: writer.stats.database == "up")
    writer.put(hostile("copied"))
    writer.put(record("plain"))
    wait_until(lambda: writer.stats.rows_written == 2)
    writer.stop(timeout=5)
    # The same row through the journal: written there while "down", replayed at the next start.
    journal.open()
    journal.append([row_values(hostile("journaled"), body_max_bytes=None)])
    journal.close()
    again = Writer(PostgresSink(PG_URL, pg_table), "pg", journal=Journal(tmp_path / "j", 1 << 20),
                   flush_interval=0.01)
    again.start()
    wait_until(lambda: again.journal_bytes == 0 and again.stats.rows_written == 1)
    assert again.alive
    again.stop(timeout=5)
    rows = pg_rows(pg_table)
    assert set(rows) == {"copied", "plain", "journaled"}
    for rid in ("copied", "journaled"):
        assert rows[rid]["model"] == "gpt-4o-mini\ufffd"
        assert rows[rid]["request_body"]["messages"][0]["content"] == "a\ufffd b\ufffd c\ufffd"
        assert rows[rid]["error"] == REPLACED_NOTE + "path, model, request_body, response_body"
    assert writer.stats.dead_letters == 0 and not (tmp_path / "j" / DEAD_LETTER).exists()


# --- 2. health tells the truth ------------------------------------------------------------

def test_health_is_failing_with_503_when_the_writer_thread_is_not_running(tmp_path):
    writer = Writer(SqliteSink(str(tmp_path / "x.db"), "t"), "test", flush_interval=0.01)
    writer.start()
    wait_until(lambda: writer.stats.database == "up")
    state = health.health(writer, None, [], 0)
    assert (state["status"], state["reason"]) == ("ok", None)
    assert health.answer(health.HEALTH_PATH, state).status_code == 200
    writer._stop.set()  # the thread ends, as it would after a crash; stats still say "up"
    writer._thread.join(5)
    assert writer.stats.database == "up" and not writer.alive
    state = health.health(writer, None, [], 0)
    assert state["status"] == "failing" and "writer thread" in state["reason"]
    assert health.answer(health.HEALTH_PATH, state).status_code == 503


# --- 3. no row contents, SQL or passwords in what the writer says -------------------------

def test_refused_rows_leave_no_body_or_sql_in_health_logs_or_dead_letters(pg_table, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    writer = Writer(PostgresSink(PG_URL, pg_table), "pg", journal=Journal(tmp_path / "j", 1 << 20),
                    flush_interval=0.01)
    writer.start()
    wait_until(lambda: writer.stats.database == "up")
    # Bodies that are not JSON: PostgreSQL's CONTEXT would quote them whole.
    for i in range(3):
        writer.put(record(f"bad{i}", request_body=f"not json {MARKER}".encode()))
    writer.put(record("good"))
    wait_until(lambda: writer.stats.rows_written + writer.stats.dead_letters == 4)
    writer.stop(timeout=5)
    assert writer.stats.dead_letters == 3
    state = json.dumps(health.health(writer, None, [], 0))
    last = writer.stats.last_error
    assert last == "InvalidTextRepresentation: SQLSTATE 22P02: invalid input syntax for type json"
    letters = [json.loads(line) for line in (tmp_path / "j" / DEAD_LETTER).read_text().splitlines()]
    assert {entry["reason"] for entry in letters} == {last}
    for text in (state, caplog.text, *(entry["reason"] for entry in letters)):
        assert MARKER not in text and "CONTEXT" not in text and "COPY" not in text
    assert len([r for r in caplog.records if "refuses a row" in r.getMessage()]) == 1  # once per kind


def test_summaries_mask_quoted_values_and_passwords():
    out_of_range = psycopg.errors.NumericValueOutOfRange('value "3000000000" is out of range for type integer')
    assert summarize(out_of_range).startswith("NumericValueOutOfRange: ")
    assert "3000000000" not in summarize(out_of_range)
    connection = psycopg.OperationalError(
        "connection to postgresql://app:s3cret@db/x?password=s3cret failed\nDETAIL: more")
    assert summarize(connection) == "OperationalError: connection to postgresql://app:***@db/x?password=*** failed"
    assert "s3cret" not in parse_db_url("postgresql://db:5432/x?sslmode=require&password=s3cret").describe()


# --- 4. a call the provider served is spend, stored or not --------------------------------

class RefusingSink:
    """A database that refuses every row outright (not a transient error)."""

    def __init__(self, spend: dict[str, Decimal] | None = None) -> None:
        self.spend = spend or {}

    def connect(self) -> None:
        pass

    def write(self, rows, *, replay: bool = False) -> None:
        raise ValueError("refused")

    def spend_since(self, windows):
        return dict(self.spend)

    @staticmethod
    def is_transient(error: Exception) -> bool:
        return False

    def close(self) -> None:
        pass


def budget_book() -> SpendBook:
    book = SpendBook()
    book.use_keys(KeyRing([VirtualKey(name="team", hash=hash_secret("team"), budget=Decimal("0.001"))]))
    return book


def test_dead_lettered_rows_keep_counting_towards_the_budget_across_refreshes(tmp_path):
    book = budget_book()
    sink = RefusingSink({"team": Decimal("0.5")})
    writer = Writer(sink, "refusing", journal=Journal(tmp_path / "j", 1 << 20), flush_interval=0.01,
                    spend=book, spend_refresh=0.01)
    writer.start()
    wait_until(lambda: book.loaded.is_set())
    now = datetime.now(UTC)
    for i in range(6):
        writer.put(record(f"r{i}", ts=now))
    wait_until(lambda: writer.stats.dead_letters == 6)
    time.sleep(0.1)  # several refreshes from the database, which holds none of these rows
    writer.stop(timeout=5)
    assert book.spend("team") == Decimal("0.506")


def test_rows_dropped_for_want_of_memory_still_count_as_spend():
    book = budget_book()
    book.refresh(lambda windows: {}, now=datetime.now(UTC))
    writer = Writer(RefusingSink(), "idle", max_queue_bytes=3000, spend=book)  # not started
    now = datetime.now(UTC)
    for i in range(5):
        writer.put(record(f"r{i}", ts=now, request_body=b"{}" + b" " * 1000))
    assert writer.stats.rows_dropped >= 3
    assert book.spend("team") == Decimal("0.005")


def test_unstored_spend_falls_out_when_its_period_is_over():
    book = SpendBook()
    book.use_keys(KeyRing([VirtualKey(name="team", hash=hash_secret("team"), budget=Decimal(1), period="1d")]))
    book.refresh(lambda windows: {}, now=TS)
    book.queued("team", Decimal("0.25"))
    book.dropped([("team", Decimal("0.25"), TS)])
    book.refresh(lambda windows: {}, now=TS + timedelta(hours=1))
    assert book.spend("team") == Decimal("0.25")
    book.refresh(lambda windows: {}, now=TS + timedelta(days=2))
    assert book.spend("team") == Decimal(0)


# --- 5. memory bounded in bytes; a database that never answers -----------------------------

class DownSink(RefusingSink):
    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.rows: list[str] = []

    def connect(self) -> None:
        if not self.up:
            raise ConnectionError("down")

    def write(self, rows, *, replay: bool = False) -> None:
        self.connect()
        self.rows.extend(row[0] for row in rows)

    @staticmethod
    def is_transient(error: Exception) -> bool:
        return isinstance(error, ConnectionError)


def test_memory_is_bounded_in_bytes_while_the_database_is_down_without_a_journal():
    sink = DownSink()
    bound = 2 << 20
    writer = Writer(sink, "down", max_queue_bytes=bound, flush_interval=0.01, max_backoff=0.02)
    writer.start()
    body = b'{"content":"' + b"x" * 200_000 + b'"}'
    for i in range(40):  # 8 MB of bodies
        writer.put(record(f"r{i}", request_body=body))
        assert writer.memory_bytes <= bound
    wait_until(lambda: not writer._batch and writer._queue.empty())
    assert writer.memory_bytes <= bound
    kept = writer.queue_depth
    assert 5 <= kept <= 10 and writer.stats.rows_dropped == 40 - kept
    sink.up = True
    wait_until(lambda: len(sink.rows) == kept)
    assert writer.memory_bytes == 0
    writer.stop(timeout=5)


class BlackHole:
    """A server that accepts TCP connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


class FreezableRelay:
    """Forwards to PostgreSQL until frozen; then holds every connection open and forwards nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.frozen.is_set():
                continue
            server = socket.create_connection(("127.0.0.1", 5432))
            self.sockets.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():
                time.sleep(0.05)  # hold the data: the database has stopped answering
            try:
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_connecting_to_a_database_that_never_answers_honours_the_urls_connect_timeout(black_hole):
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{black_hole.port}/test?connect_timeout=1", "t")
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        sink.connect()
    assert time.monotonic() - started < 3


def test_the_writer_journals_rows_while_the_database_is_a_black_hole(black_hole, tmp_path):
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{black_hole.port}/test", "t", connect_timeout=1)
    writer = Writer(sink, "hole", journal=Journal(tmp_path / "j", 1 << 20), flush_interval=0.01, max_backoff=0.5)
    writer.start()
    for i in range(20):
        writer.put(record(f"r{i}"))
    wait_until(lambda: writer.stats.rows_journaled == 20, timeout=6)
    assert writer.stats.database == "down" and writer.alive
    writer.stop(timeout=5)


def test_a_database_that_stops_answering_mid_statement_cannot_stall_the_writer(pg_table, tmp_path):
    relay = FreezableRelay()
    try:
        sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{relay.port}/test", pg_table,
                            connect_timeout=1, io_timeout=1)
        writer = Writer(sink, "frozen", journal=Journal(tmp_path / "j", 1 << 20), flush_interval=0.01,
                        max_backoff=0.5)
        writer.start()
        wait_until(lambda: writer.stats.database == "up")
        writer.put(record("before"))
        wait_until(lambda: writer.stats.rows_written == 1)
        relay.frozen.set()
        for i in range(10):
            writer.put(record(f"r{i}"))
        wait_until(lambda: writer.stats.rows_journaled == 10, timeout=8)  # io_timeout, then reconnects fail
        assert writer.stats.database == "down" and writer.alive
        writer.stop(timeout=5)
    finally:
        relay.close()


# --- 6. no usable journal: keep serving, hold rows in memory, say so -----------------------

def test_without_a_usable_journal_rows_wait_in_memory_and_health_says_why(tmp_path):
    owner = Journal(tmp_path / "j", 1 << 20)
    owner.open()  # another proxy holds the directory
    sink = DownSink()
    writer = Writer(sink, "down", journal=Journal(tmp_path / "j", 1 << 20), flush_interval=0.01, max_backoff=0.02)
    writer.start()
    for i in range(5):
        writer.put(record(f"r{i}"))
    wait_until(lambda: writer.journal_problem is not None and len(writer._held) == 5)
    sink.up = True
    wait_until(lambda: len(sink.rows) == 5)
    state = health.health(writer, None, [], 0)
    assert state["status"] == "degraded" and state["reason"].startswith("no journal: ")
    assert "in use by another llm-proxy process" in state["reason"]
    assert health.answer(health.HEALTH_PATH, state).status_code == 200
    assert writer.alive
    writer.stop(timeout=5)
    owner.close()
    assert not list(Path(tmp_path / "j").glob("segment-*"))


def test_json_constants_jsonb_refuses_become_null_with_the_note():
    body = b'{"model":"gpt-4o-mini","temperature":NaN,"top_p":-Infinity,"stop":["NaN"]}'
    row = as_dict(row_values(record(request_body=body, response_body={"score": float("inf")}), body_max_bytes=None))
    assert json.loads(row["request_body"]) == {"model": "gpt-4o-mini", "temperature": None, "top_p": None,
                                               "stop": ["NaN"]}
    assert json.loads(row["response_body"]) == {"score": None}
    assert row["error"] == REPLACED_NOTE + "request_body, response_body"
    plain = as_dict(row_values(record(request_body=b'{"content":"NaN and Infinity"}'), body_max_bytes=None))
    assert plain["request_body"] == '{"content":"NaN and Infinity"}' and plain["error"] is None


def test_written_rows_move_from_queued_to_written_in_the_spend_book(tmp_path):
    book = budget_book()
    writer = Writer(SqliteSink(str(tmp_path / "s.db"), "t"), "test", flush_interval=0.01, spend=book)
    writer.start()
    wait_until(lambda: book.loaded.is_set())
    writer.put(record("r1", ts=datetime.now(UTC)))
    wait_until(lambda: writer.stats.rows_written == 1)
    writer.stop(timeout=5)
    assert writer.stats.internal_errors == 0 and book.spend("team") == Decimal("0.001")


def test_a_huge_number_beside_a_constant_is_stored_as_null_too() -> None:
    """Found by the fuzz layer (F16): cleaning `-Infinity` re-serialised 1e400 as Infinity."""
    from llm_proxy.storage.rows import to_json
    assert json.loads(to_json(b'[1e400,-Infinity,2.5]', None)) == [None, None, 2.5]
