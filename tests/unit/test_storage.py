"""Rows, schema, the SQLite sink, the writer thread, and database URLs."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from llm_proxy.record import COLUMNS, Record
from llm_proxy.storage.dsn import Database, DatabaseURLError, check_table_name, parse_db_url
from llm_proxy.storage.rows import TRUNCATED_HEAD, row_values, to_json
from llm_proxy.storage.schema import schema_for, sqlite_schema
from llm_proxy.storage.sqlite import SqliteSink, _sqlite_value
from llm_proxy.storage.writer import Writer

TS = datetime(2026, 1, 1, 12, 30, 5, 250000, tzinfo=UTC)


def record(request_id: str = "req-1", **kw) -> Record:
    values = dict(
        ts=TS, duration_ms=812, ttft_ms=240, provider="openai", api="openai-chat", method="POST",
        path="/v1/chat/completions", upstream_url="https://api.openai.com/v1/chat/completions",
        model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", key_id="fp-668d08330cb0",
        streaming=True, status=200, input_tokens=1204, output_tokens=312, total_tokens=1516,
        cached_tokens=1024, cache_write_tokens=0, reasoning_tokens=0, cost_usd=Decimal("0.000291"),
        request_body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ça va? 日本"}]},
        response_body={"choices": [{"message": {"content": "Oui"}}]}, client_addr="127.0.0.1",
    )
    values.update(kw)
    return Record(request_id=request_id, **values)


# --- rows --------------------------------------------------------------------------------

def test_to_json_compact_and_unicode():
    assert to_json({"a": [1, "é"], "b": None}, None) == '{"a":[1,"é"],"b":null}'
    assert to_json(None, 10) is None


def test_to_json_under_and_at_the_cap():
    assert to_json("x" * 8, 10) == '"xxxxxxxx"'


def test_to_json_truncation_marker_over_cap():
    value = {"messages": ["y" * 5000]}
    text = to_json(value, 1000)
    marker = json.loads(text)
    full = json.dumps(value, separators=(",", ":"))
    assert marker == {"truncated": True, "size_bytes": len(full), "head": full[:TRUNCATED_HEAD]}
    assert len(marker["head"]) == 4096


def test_to_json_truncation_counts_bytes_not_characters():
    value = "日本語" * 30  # 92 characters of JSON text, but 272 bytes of UTF-8
    text = to_json(value, 200)
    assert json.loads(text) == {"truncated": True, "size_bytes": 272, "head": '"' + value + '"'}


@pytest.mark.parametrize("value,expected", [
    ("a\x00b", "a\ufffdb"),
    ("\\u0000", "\\u0000"),  # a literal backslash-u0000 text is not a NUL
    ("\\\x00", "\\\ufffd"),  # backslash followed by a real NUL
    ({"k\x00": ["\x00", "ok"]}, {"k\ufffd": ["\ufffd", "ok"]}),
])
def test_to_json_nul_characters_escaped_for_jsonb(value, expected):
    text = to_json(value, None)
    assert "\\u0000" not in text.replace("\\\\u0000", "")
    assert json.loads(text) == expected


def test_row_values_order_and_json_columns():
    values = row_values(record(attempts=[{"status": 429}, {"status": 200}]), body_max_bytes=None)
    assert len(values) == len(COLUMNS) == 27
    row = dict(zip(COLUMNS, values))
    assert row["request_id"] == "req-1"
    assert row["cost_usd"] == Decimal("0.000291")
    assert row["attempts"] == '[{"status":429},{"status":200}]'
    assert row["request_body"] == ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ça va? 日本"}]}')
    assert row["response_body"] == '{"choices":[{"message":{"content":"Oui"}}]}'


def test_row_values_caps_bodies_but_not_attempts():
    big = ["z" * 100] * 50
    row = dict(zip(COLUMNS, row_values(record(attempts=big, response_body=big), body_max_bytes=1000)))
    assert json.loads(row["attempts"]) == big
    assert json.loads(row["response_body"])["truncated"] is True


# --- schema ------------------------------------------------------------------------------

def test_schema_for_renames_table_and_index_names():
    ddl = schema_for("calls_v2")
    assert "CREATE TABLE IF NOT EXISTS calls_v2 (" in ddl
    assert "CREATE INDEX IF NOT EXISTS calls_v2_ts_idx ON calls_v2 (ts);" in ddl
    assert "CREATE INDEX IF NOT EXISTS calls_v2_key_ts_idx ON calls_v2 (key_id, ts);" in ddl
    assert "llm_requests" not in ddl


def test_schema_default_table_unchanged():
    ddl = schema_for("llm_requests")
    assert "CREATE TABLE IF NOT EXISTS llm_requests (" in ddl
    assert "llm_requests_ts_idx" in ddl


def test_sqlite_schema_maps_types():
    ddl = sqlite_schema("t")
    assert "id INTEGER PRIMARY KEY," in ddl
    assert "ts TEXT NOT NULL" in ddl
    assert "cost_usd TEXT," in ddl
    assert "request_body TEXT," in ddl and "attempts TEXT," in ddl
    code = "\n".join(line.split("--")[0] for line in ddl.splitlines())
    for word in ("bigserial", "timestamptz", "jsonb", "numeric"):
        assert word not in code


def test_two_tables_in_one_sqlite_file_each_get_their_indexes(tmp_path):
    conn = sqlite3.connect(tmp_path / "two.db")
    conn.executescript(sqlite_schema("llm_requests"))
    conn.executescript(sqlite_schema("calls_v2"))
    indexes = {name: table for name, table in conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name NOT IN ('llm_jobs', 'llm_budget_alerts')")}  # schema.sql's other tables keep their names
    conn.close()
    assert sorted(t for t in indexes.values()) == ["calls_v2", "calls_v2", "llm_requests", "llm_requests"]


# --- SQLite sink + writer ----------------------------------------------------------------

def read_rows(path, table="llm_requests"):
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


def test_sqlite_sink_via_writer_round_trip(tmp_path):
    path = tmp_path / "sub" / "llm.db"
    writer = Writer(SqliteSink(str(path), "llm_requests"), "test", flush_interval=0.01)
    writer.start()
    writer.put(record("req-1"))
    writer.put(record("req-2", cost_usd=None, error="HTTP 429: requests: slow down", status=429,
                      input_tokens=None, output_tokens=None, total_tokens=None, response_body=None))
    writer.stop(timeout=5)
    assert writer.stats.rows_written == 2
    assert writer.stats.database == "stopped"
    rows = read_rows(path)
    assert [r["request_id"] for r in rows] == ["req-1", "req-2"]
    first = rows[0]
    assert first["cost_usd"] == "0.000291"
    assert Decimal(first["cost_usd"]) == Decimal("0.000291")
    assert first["ts"] == "2026-01-01T12:30:05.250000+00:00"
    assert first["streaming"] == 1
    assert (first["input_tokens"], first["output_tokens"], first["total_tokens"], first["cached_tokens"]) == (
        1204, 312, 1516, 1024)
    assert json.loads(first["request_body"])["messages"][0]["content"] == "ça va? 日本"
    assert first["response_body"] == '{"choices":[{"message":{"content":"Oui"}}]}'
    second = rows[1]
    assert (second["cost_usd"], second["input_tokens"], second["response_body"]) == (None, None, None)
    assert second["error"] == "HTTP 429: requests: slow down"


def test_sqlite_insert_or_ignore_duplicate_request_id(tmp_path):
    sink = SqliteSink(str(tmp_path / "d.db"), "calls")
    sink.connect()
    sink.write([row_values(record("dup", model="first"), body_max_bytes=None)])
    sink.write([row_values(record("dup", model="second"), body_max_bytes=None),
                row_values(record("other"), body_max_bytes=None)])
    sink.close()
    rows = read_rows(tmp_path / "d.db", "calls")
    assert [(r["request_id"], r["model"]) for r in rows] == [("dup", "first"), ("other", "gpt-4o-mini")]


def test_sqlite_values_are_exact_text():
    assert _sqlite_value(Decimal("0.037775")) == "0.037775"
    assert _sqlite_value(Decimal("1.6E-7")) == "1.6E-7"
    assert _sqlite_value(TS) == "2026-01-01T12:30:05.250000+00:00"
    assert _sqlite_value(7) == 7


class FakeSink:
    """Records what reached the 'database'; can be down for a while or refuse one row."""

    def __init__(self, *, down_calls: int = 0, reject: str | None = None) -> None:
        self.down_calls = down_calls
        self.reject = reject
        self.rows: list[str] = []
        self.connects = 0
        self.closed = False
        self.lock = threading.Lock()

    def _maybe_down(self) -> None:
        with self.lock:
            if self.down_calls > 0:
                self.down_calls -= 1
                raise ConnectionError("database is down")

    def connect(self) -> None:
        self.connects += 1
        self._maybe_down()

    @staticmethod
    def is_transient(error: Exception) -> bool:
        return isinstance(error, ConnectionError)

    def write(self, rows, *, replay: bool = False) -> None:
        self._maybe_down()
        ids = [row[0] for row in rows]
        if self.reject in ids:
            raise ValueError(f"row {self.reject} violates a constraint")
        self.rows.extend(ids)

    def close(self) -> None:
        self.closed = True


def test_writer_retries_through_an_outage_and_writes_every_row_once():
    sink = FakeSink(down_calls=4)
    writer = Writer(sink, "fake", flush_interval=0.01, max_backoff=0.02, batch_size=3)
    writer.start()
    ids = [f"r{i}" for i in range(10)]
    for rid in ids:
        writer.put(record(rid))
    deadline = time.monotonic() + 4
    while len(sink.rows) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.stop(timeout=2)
    assert sink.rows == ids
    assert writer.stats.rows_written == 10
    assert writer.stats.rows_dropped == 0
    assert sink.connects >= 3  # it kept trying until the database was back
    assert writer.stats.last_error == "ConnectionError: database is down"
    assert sink.closed is True


def test_writer_sets_aside_only_the_row_the_database_refuses():
    sink = FakeSink(reject="bad")
    writer = Writer(sink, "fake", flush_interval=0.01, max_backoff=0.02)
    writer.start()
    for rid in ("a", "b", "bad", "c"):
        writer.put(record(rid))
    writer.stop(timeout=3)
    assert sink.rows == ["a", "b", "c"]
    assert writer.stats.rows_written == 3
    assert (writer.stats.dead_letters, writer.stats.rows_dropped) == (1, 0)
    assert writer.stats.last_error == "ValueError: row bad violates a constraint"


def test_put_never_blocks_and_counts_dropped_rows():
    writer = Writer(FakeSink(), "fake", max_queue=3)  # not started: nothing drains the queue
    started = time.perf_counter()
    for i in range(10):
        writer.put(record(f"r{i}"))
    assert time.perf_counter() - started < 0.5
    assert writer.stats.rows_dropped == 7
    assert writer.queue_depth == 3


def test_writer_holds_rows_through_an_outage_within_the_queue_bound():
    sink = FakeSink(down_calls=6)
    writer = Writer(sink, "fake", flush_interval=0.01, max_backoff=0.01, max_queue=5, batch_size=2)
    for i in range(8):
        writer.put(record(f"r{i}"))
    assert writer.stats.rows_dropped == 3  # the queue is full: newest rows are refused, put() returns
    writer.start()
    deadline = time.monotonic() + 3
    while len(sink.rows) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.stop(timeout=1)
    assert sink.rows == ["r0", "r1", "r2", "r3", "r4"]
    assert writer.stats.rows_written == 5
    assert writer.queue_depth == 0


def test_writer_stop_with_database_down_reports_rows_left():
    sink = FakeSink(down_calls=10**6)
    writer = Writer(sink, "fake", flush_interval=0.01, max_backoff=0.01)
    writer.start()
    writer.put(record("r0"))
    writer.put(record("r1"))
    time.sleep(0.05)
    writer.stop(timeout=2)
    assert sink.rows == []
    assert writer.stats.rows_written == 0
    assert writer.queue_depth == 2
    assert writer.stats.database == "stopped"
    assert writer.stats.last_error == "ConnectionError: database is down"


# --- database URLs -----------------------------------------------------------------------

@pytest.mark.parametrize("url,db", [
    ("postgresql://postgres@127.0.0.1:5432/test", Database("postgresql", "postgresql://postgres@127.0.0.1:5432/test")),
    ("postgres://u:pw@db/x", Database("postgresql", "postgres://u:pw@db/x")),
    ("sqlite:///rel/llm.db", Database("sqlite", "rel/llm.db")),
    ("sqlite:////abs/path/llm.db", Database("sqlite", "/abs/path/llm.db")),
])
def test_parse_db_url(url, db):
    assert parse_db_url(url) == db


@pytest.mark.parametrize("url,message", [
    ("sqlite:///", "names no file"),
    ("sqlite:////var/lib/", "names no file"),
    ("sqlite://llm.db", "is not a database URL"),
    ("mysql://root@localhost/db", "is not a database URL"),
    ("", "is not a database URL"),
    ("/tmp/llm.db", "is not a database URL"),
])
def test_parse_db_url_errors(url, message):
    with pytest.raises(DatabaseURLError, match=message):
        parse_db_url(url)


def test_describe_hides_the_password():
    assert parse_db_url("postgresql://app:s3cret@db:5432/llm").describe() == "postgresql postgresql://app:***@db:5432/llm"
    assert parse_db_url("postgresql://app@db/llm").describe() == "postgresql postgresql://app@db/llm"
    assert parse_db_url("sqlite:////x/y.db").describe() == "sqlite file /x/y.db"


@pytest.mark.parametrize("name,ok", [("llm_requests", True), ("_t1", True), ("a" * 51, True), ("a" * 52, False),
                                     ("1abc", False), ("llm-requests", False), ("t; DROP TABLE x", False),
                                     ("", False)])
def test_check_table_name(name, ok):
    if ok:
        assert check_table_name(name) == name
    else:
        with pytest.raises(DatabaseURLError, match="must be a plain SQL identifier"):
            check_table_name(name)


def test_to_json_stores_raw_json_text_as_it_came_capped_and_nul_safe():
    raw = b'{\n  "model": "gpt-4o-mini",\n  "content": "a\\u0000b \\u00e9"\n}'
    assert to_json(raw, None) == '{\n  "model": "gpt-4o-mini",\n  "content": "a\\ufffdb \\u00e9"\n}'
    capped = json.loads(to_json(raw, 40))
    assert capped["truncated"] is True and capped["size_bytes"] == len(raw)
