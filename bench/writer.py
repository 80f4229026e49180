"""The writer alone: how many rows per second go into PostgreSQL, in-process."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from bench.services import BenchError, system_cpu

MODEL = "gpt-4o-mini"

_REQUEST_BODY = {"model": MODEL, "max_tokens": 32,
                 "messages": [{"role": "system", "content": "You are a terse assistant."},
                              {"role": "user", "content": "Say hello in one short sentence."}]}
_RESPONSE_BODY = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1767225600, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello! How can I help you today?"}}],
    "usage": {"prompt_tokens": 27, "completion_tokens": 9, "total_tokens": 36,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
}


# As the proxy hands them over: the JSON text the bodies arrived as.
_REQUEST_JSON = json.dumps(_REQUEST_BODY).encode()
_RESPONSE_JSON = json.dumps(_RESPONSE_BODY).encode()


def make_record(i: int) -> Any:
    from llm_proxy.record import Record

    return Record(
        request_id=f"bench-w-{uuid.uuid4().hex}", ts=datetime.now(timezone.utc), duration_ms=412 + i % 50,
        ttft_ms=180 + i % 30, provider="openai", api="chat", method="POST", path="/v1/chat/completions",
        upstream_url="https://api.openai.com/v1/chat/completions", model=MODEL,
        response_model="gpt-4o-mini-2024-07-18", key_id="bench-writer", streaming=bool(i % 2), status=200,
        input_tokens=27, output_tokens=9, total_tokens=36, cached_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, cost_usd=Decimal("0.00000945"), request_body=_REQUEST_JSON,
        response_body=_RESPONSE_JSON, client_addr="127.0.0.1",
    )


def bench_writer(pg_url: str, table: str, n: int, count_rows: Callable[[], int]) -> dict[str, Any]:
    """Put `n` records into a Writer with a PostgresSink and time until all are written."""
    from llm_proxy.storage.postgres import PostgresSink
    from llm_proxy.storage.writer import Writer

    print(f"writer: {n:,} rows into PostgreSQL ...", end="", flush=True)
    records = [make_record(i) for i in range(n)]
    before = count_rows()
    writer = Writer(PostgresSink(pg_url, table), f"bench table {table}", max_queue=n + 1,
                    max_queue_bytes=None)  # the benchmark queues every row up front, on purpose
    writer.start()
    try:
        deadline = time.monotonic() + 15
        while writer.stats.database != "up":
            if time.monotonic() > deadline:
                raise BenchError(f"the writer did not connect: {writer.stats.last_error}")
            time.sleep(0.01)
        sys0, t0 = system_cpu(), time.perf_counter()
        for record in records:
            writer.put(record)
        put_s = time.perf_counter() - t0
        deadline = time.monotonic() + max(120, n / 1000)
        while writer.stats.rows_written + writer.stats.rows_dropped < n:
            if time.monotonic() > deadline:
                raise BenchError(f"the writer wrote {writer.stats.rows_written} of {n} rows in time")
            time.sleep(0.002)
        elapsed, sys1 = time.perf_counter() - t0, system_cpu()
    finally:
        writer.stop()
    stats = writer.stats
    rows = count_rows() - before
    print(f" {stats.rows_written / elapsed:,.0f} rows/s ({elapsed:.2f} s; in the table: {rows:,})")
    sys.stdout.flush()
    return {
        "rows": n, "seconds": elapsed, "rows_per_s": stats.rows_written / elapsed, "put_s": put_s,
        "rows_written": stats.rows_written, "rows_dropped": stats.rows_dropped,
        "batches_failed": stats.batches_failed, "rows_in_table": rows,
        "machine_cpu_pct": None if sys0 is None or sys1 is None else 100 * (sys1[0] - sys0[0]) / elapsed,
        "steal_pct": None if sys0 is None or sys1 is None else 100 * (sys1[1] - sys0[1]) / elapsed,
    }
