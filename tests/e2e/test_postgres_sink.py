"""The PostgreSQL sink against the real server: COPY text escaping, idempotence, exact money."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal

import psycopg

from llm_proxy.record import Record
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.rows import row_values


def test_copy_round_trips_awkward_values_and_ignores_duplicates(pg_url: str) -> None:
    table = "llmp_test_sink_" + os.urandom(4).hex()
    awkward = "tab\there\nnew line\r\\back\\slash \\N é 日本 \x00nul"
    record = Record(
        request_id="r-1", ts=datetime(2026, 11, 23, 3, 4, 5, 678901, tzinfo=UTC), path=awkward, model="gpt\\4o",
        streaming=False, status=200, input_tokens=12, cost_usd=Decimal("0.0000001234"),
        request_body={"messages": [{"content": awkward.replace("\x00", "")}]}, attempts=[{"status": 503}],
    )
    sink = PostgresSink(pg_url, table)
    try:
        sink.connect()
        rows = [row_values(record, body_max_bytes=None)]
        sink.write(rows)
        sink.write(rows)  # a replayed batch: stored once
        with psycopg.connect(pg_url) as conn:
            [(count, path, model, cost, ts, body, attempts, streaming)] = conn.execute(
                f"SELECT count(*) OVER (), path, model, cost_usd, ts, request_body, attempts, streaming FROM {table}"
            ).fetchall()
        assert count == 1
        assert path == awkward.replace("\x00", "\ufffd") and model == "gpt\\4o"
        assert cost == Decimal("0.0000001234") and ts == record.ts and streaming is False
        assert body == {"messages": [{"content": awkward.replace("\x00", "")}]} and attempts == [{"status": 503}]
    finally:
        sink.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_bodies CASCADE")
