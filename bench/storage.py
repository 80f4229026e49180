"""Bytes per call of a coding agent's session, bodies stored verbatim vs. as parts by hash.

    python -m bench.storage [--calls 50] [--db postgresql://...] [--sqlite]

Builds a coding agent's growing conversation (Anthropic Messages shape: a ~10 KB
system prompt, ~40 KB of tool schemas, then per call the model's tool call and
a ~3.5 KB tool result appended: request bodies grow from ~50 KB to ~250 KB,
~150 KB on average) and writes one row per call through the proxy's own sink,
twice: with large bodies split into parts (what the proxy does) and with every
body stored verbatim as jsonb (what it did before). Reports the bodies' bytes
laid end to end and the bytes the table (all partitions, indexes, TOAST) and the
parts table take on disk (pg_total_relation_size), per call.

Not a throughput benchmark: the numbers are sizes, the same on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from llm_proxy.record import Record
from llm_proxy.storage import bodies
from llm_proxy.storage.rows import row_values

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_WORDS = ("def class return self import from if else for while in not None True False value result error "
          "config path name items list dict json request response model token cost table row writer sink "
          "partition hash part body message tool input output user assistant system stream chunk event").split()


def _code(rng: random.Random, size: int) -> str:
    """Code-like text: indented lines of identifiers and punctuation, about `size` characters."""
    lines, total = [], 0
    while total < size:
        indent = "    " * rng.randint(0, 3)
        words = [rng.choice(_WORDS) + (str(rng.randint(0, 99)) if rng.random() < 0.3 else "")
                 for _ in range(rng.randint(3, 10))]
        line = indent + " ".join(words) + rng.choice(("", ":", "()", ",", " = 0", "  # note"))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)


def _tools(rng: random.Random, count: int = 24) -> list[dict[str, Any]]:
    return [{
        "name": f"tool_{i}_{rng.choice(_WORDS)}",
        "description": _code(rng, 900).replace("\n", " "),
        "input_schema": {"type": "object", "properties": {
            f"{rng.choice(_WORDS)}_{j}": {"type": rng.choice(("string", "integer", "boolean")),
                                           "description": _code(rng, 80).replace("\n", " ")}
            for j in range(rng.randint(2, 6))}, "required": []},
    } for i in range(count)]


def agent_session(calls: int = 50, seed: int = 13) -> Iterator[tuple[bytes, bytes]]:
    """(request body, response body) of each call of one agent session, as the client sends them."""
    rng = random.Random(seed)
    system = [{"type": "text", "text": _code(rng, 10_000), "cache_control": {"type": "ephemeral"}}]
    tools = _tools(rng)
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": _code(rng, 600)}]}]
    for call in range(calls):
        request = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "system": system, "tools": tools,
                   "messages": messages, "temperature": 1.0, "stream": False,
                   "metadata": {"user_id": f"session-{seed}"}}
        tool_id = f"toolu_{seed:02d}{call:04d}{rng.randint(0, 10**12):012d}"
        answer = [{"type": "text", "text": _code(rng, 300)},
                  {"type": "tool_use", "id": tool_id, "name": rng.choice(tools)["name"],
                   "input": {"path": f"src/{rng.choice(_WORDS)}.py", "offset": rng.randint(0, 2000)}}]
        response = {"id": f"msg_{seed:02d}{call:04d}", "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929", "content": answer, "stop_reason": "tool_use",
                    "usage": {"input_tokens": 3 + call, "cache_read_input_tokens": 40_000 + 900 * call,
                              "output_tokens": 120}}
        yield (json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode(),
               json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode())
        messages = [*messages, {"role": "assistant", "content": answer},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id,
                                                  "content": _code(rng, rng.randint(2500, 4500))}]}]


def records(session: list[tuple[bytes, bytes]], start: datetime | None = None) -> list[Record]:
    start = start or datetime.now(UTC)
    return [Record(request_id=secrets.token_hex(8), ts=start + timedelta(seconds=20 * i), provider="anthropic",
                   api="anthropic-messages", method="POST", path="/v1/messages", model="claude-sonnet-4-5",
                   response_model="claude-sonnet-4-5-20250929", key_id="agent", streaming=False, status=200,
                   input_tokens=40_000, output_tokens=120, total_tokens=40_120, cost_usd=Decimal("0.0123"),
                   request_body=req, response_body=resp, client_addr="127.0.0.1")
            for i, (req, resp) in enumerate(session)]


def postgres_bytes(conn: Any, table: str) -> tuple[int, int]:
    """(rows' table with all partitions, indexes and TOAST; the parts table) on disk, in bytes."""
    rows = conn.execute("SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree(%s)",
                        (table,)).fetchone()[0]
    parts = conn.execute("SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)",
                         (f"{table}_bodies",)).fetchone()[0]
    return int(rows), int(parts)


def measure_postgres(url: str, session: list[tuple[bytes, bytes]], *, split: bool) -> dict[str, int]:
    import psycopg

    from llm_proxy.storage.postgres import PostgresSink

    table = f"bench_storage_{secrets.token_hex(4)}"
    sink = PostgresSink(url, table)
    saved = bodies.SPLIT_MIN_CHARS
    try:
        if not split:
            bodies.SPLIT_MIN_CHARS = 1 << 62  # every body plain jsonb: the proxy as it stored them before
        sink.connect()
        for record in records(session):  # one row per transaction, as calls seconds apart are written
            sink.write([row_values(record, body_max_bytes=None)])
        sink.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {table}")
            conn.execute(f"VACUUM ANALYZE {table}_bodies")
            rows, parts = postgres_bytes(conn, table)
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_bodies CASCADE")
    finally:
        bodies.SPLIT_MIN_CHARS = saved
        sink.close()
    return {"table": rows, "parts": parts}


def measure_sqlite(session: list[tuple[bytes, bytes]], *, split: bool) -> dict[str, int]:
    from llm_proxy.storage.sqlite import SqliteSink

    saved = bodies.SPLIT_MIN_CHARS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        sink = SqliteSink(str(path), "llm_requests")
        try:
            if not split:
                bodies.SPLIT_MIN_CHARS = 1 << 62
            sink.connect()
            for record in records(session):
                sink.write([row_values(record, body_max_bytes=None)])
        finally:
            bodies.SPLIT_MIN_CHARS = saved
            sink.close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.close()
        return {"table": path.stat().st_size, "parts": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--db", default=PG_URL, help="PostgreSQL URL (default $LLM_PROXY_TEST_PG)")
    parser.add_argument("--sqlite", action="store_true", help="also measure the embedded SQLite file")
    args = parser.parse_args(argv)
    session = list(agent_session(args.calls))
    end_to_end = sum(len(a) + len(b) for a, b in session)
    requests = [len(a) for a, _ in session]
    print(f"agent session: {args.calls} calls, request bodies {min(requests) // 1024}-{max(requests) // 1024} KB "
          f"(mean {sum(requests) // len(requests) // 1024} KB); bodies end to end {end_to_end / 1e6:.2f} MB "
          f"({end_to_end // args.calls // 1024} KB per call)")
    runs = [("postgresql", lambda split: measure_postgres(args.db, session, split=split))]
    if args.sqlite:
        runs.append(("sqlite", lambda split: measure_sqlite(session, split=split)))
    for name, run in runs:
        for label, split in (("verbatim (before)", False), ("parts by hash (after)", True)):
            size = run(split)
            total = size["table"] + size["parts"]
            print(f"  {name:10} {label:22}: {total / 1e6:7.3f} MB on disk (table {size['table'] // 1024} KB, "
                  f"parts {size['parts'] // 1024} KB) = {total // args.calls // 1024:4d} KB per call, "
                  f"{100 * total / end_to_end:5.1f}% of the bodies end to end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
