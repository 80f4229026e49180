"""Reports at size: `python -m bench.reports [--rows 1000000] [--sqlite] [--writer-rows 20000] [--keep-table T]`.

Fills a fresh table with realistic rows (hundreds of keys and models with
skewed use, 90 days, small bodies), starts a real mitmdump with the addon on
it, and times GET /_llm/api/usage for the four reports of issue 10 (totals
over the default 30 days, group_by=key,model, group_by=day over 30 days,
group_by=hour over 24 h). Every answer's totals are checked against a plain
sum of the raw rows. With --writer-rows N it also measures what the rollup's
triggers cost the writer: bench.writer's rows/s into a table without the
rollup and into one with it.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import httpx
import psycopg

from llm_proxy.control.reports import drop_calls_table, ensure_rollup, money
from llm_proxy.control.rollup import ensure_sqlite_rollup
from llm_proxy.record import Record
from llm_proxy.storage.dsn import check_table_name
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.schema import schema_for, sqlite_schema
from llm_proxy.storage.sqlite import SqliteSink

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REPORTS = {
    "totals (30d)": "since=30d",
    "group_by=key,model (30d)": "since=30d&group_by=key,model",
    "group_by=day (30d)": "since=30d&group_by=day",
    "group_by=hour (24h)": "since=24h&group_by=hour",
}
LIMITS = {"postgresql": 0.3, "sqlite": 1.0}


def realistic_records(count: int, seed: int = 10) -> Any:
    """Skewed like real traffic: a few keys and models carry most calls; each key sticks to a few models."""
    rng = random.Random(seed)
    keys = [f"team-{i:03d}" for i in range(400)]
    models = [(f"model-{i:03d}", rng.choice(["openai", "anthropic", "gemini", "openrouter"]),
               Decimal(rng.choice(["0.15", "0.4", "1.25", "2.5", "3", "10", "15"])) / 1_000_000) for i in range(300)]
    key_weights = [1 / (i + 1) ** 1.1 for i in range(len(keys))]
    habits = {k: rng.sample(range(len(models)), 4) for k in keys}
    now = datetime.now(UTC)
    body = {"model": "m", "messages": [{"role": "user", "content": "Summarise the ticket in one line. " * 4}]}
    answer = {"choices": [{"message": {"role": "assistant", "content": "The customer wants a refund."}}]}
    for _ in range(count):
        key = rng.choices(keys, key_weights)[0]
        model, provider, price = models[rng.choice(habits[key]) if rng.random() < 0.9 else rng.randrange(300)]
        status = 200 if rng.random() < 0.96 else rng.choice([400, 429, 500, 503])
        tokens_in, tokens_out = rng.randint(20, 4000), rng.randint(1, 800)
        priced = rng.random() < 0.97
        yield Record(
            request_id=uuid.uuid4().hex, ts=now - timedelta(seconds=rng.uniform(0, 90 * 86400)),
            duration_ms=rng.randint(200, 20000), ttft_ms=rng.randint(100, 2000), provider=provider,
            api="openai-chat", method="POST", path="/v1/chat/completions", model=model,
            response_model=model + "-2025", key_id=key, streaming=rng.random() < 0.5, status=status,
            error=None if status == 200 else f"HTTP {status}", input_tokens=tokens_in, output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out, cached_tokens=rng.choice([0, 0, 0, tokens_in // 2]),
            cache_write_tokens=0, reasoning_tokens=0,
            cost_usd=(price * (tokens_in + 4 * tokens_out)).normalize() if priced and status == 200 else None,
            request_body=body, response_body=answer, client_addr="10.0.0.7",
        )


def write_records(sink: Any, records: Iterable[Record], batch: int = 5000) -> None:
    """Store `records` through `sink` in batches (the writer's own row conversion)."""
    sink.connect()
    try:
        pending: list[Any] = []
        for record in records:
            pending.append(row_values(record, body_max_bytes=None))
            if len(pending) >= batch:
                sink.write(pending)
                pending = []
        if pending:
            sink.write(pending)
    finally:
        sink.close()


def fill(sink: Any, rows: int, batch: int = 5000) -> float:
    started = time.monotonic()
    write_records(sink, realistic_records(rows), batch)
    return time.monotonic() - started


def raw_totals(db_url: str, table: str, since: datetime, until: datetime) -> tuple[int, str]:
    """The plain sum the API must equal: count and exact cost of the rows in the window."""
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:
            count, cost = conn.execute(f"SELECT count(*), coalesce(sum(cost_usd), 0) FROM {table} "
                                       "WHERE ts >= %s AND ts < %s", (since, until)).fetchone()
        return count, money(cost)
    import sqlite3
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    rows = conn.execute(f"SELECT cost_usd FROM {table} WHERE ts >= ? AND ts < ?",
                        (since.isoformat(), until.isoformat())).fetchall()
    conn.close()
    return len(rows), money(sum((Decimal(c) for (c,) in rows if c is not None), Decimal(0)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_reports(db_url: str, table: str, repeat: int, home: Path) -> dict[str, float]:
    port = free_port()
    proxy = subprocess.Popen(
        [str(Path(sys.executable).parent / "mitmdump"), "-s", str(REPO / "addon" / "llm_proxy.py"),
         "--listen-host", "127.0.0.1", "--mode", f"reverse:http://127.0.0.1:9@{port}", "--set", f"confdir={home}",
         "--set", f"llm_db={db_url}", "--set", f"llm_table={table}", "--set", "llm_admin_key=",
         "--set", "flow_detail=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "LLM_PROXY_HOME": str(home)},
    )
    results = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get("/_llm/api/usage?since=1m").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            for name, query in REPORTS.items():
                timings = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    # no-cache: past the control plane's 1 s answer cache (the kept sums of closed
                    # days still serve: they are exact, checked against the rollups' generation).
                    answer = client.get(f"/_llm/api/usage?{query}", headers={"cache-control": "no-cache"})
                    timings.append(time.perf_counter() - started)
                    answer.raise_for_status()
                body = answer.json()
                since, until = (datetime.fromisoformat(body[k]) for k in ("since", "until"))
                count, cost = raw_totals(db_url, table, since, until)
                assert (body["totals"]["requests"], body["totals"]["cost_usd"]) == (count, cost), (name, body)
                results[name] = statistics.median(timings)
                print(f"  {name:<28} p50 {results[name] * 1000:7.1f} ms  first {timings[0] * 1000:7.1f} ms  "
                      f"max {max(timings) * 1000:7.1f} ms   (totals equal the raw rows: "
                      f"{count:,} calls, ${cost})")
    finally:
        proxy.terminate()
        proxy.wait(30)
    return results


def writer_cost(rows: int) -> None:
    from bench.writer import bench_writer
    for rollup in (False, True):
        table = f"bench_wr_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                if rollup:
                    ensure_rollup(conn, table)
                else:
                    conn.execute(schema_for(table).encode())  # the table exists before the count

            def count() -> int:
                with psycopg.connect(PG_URL) as c:
                    return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            print(f"writer {'with' if rollup else 'without'} the rollups:", end="")
            bench_writer(PG_URL, table, rows, count)
        finally:
            drop(PG_URL, table)


def sqlite_writer_cost(rows: int) -> None:
    """SqliteSink's rows/s (batches of 500, as the writer sends them) without and with the rollups."""
    records = [row_values(r, body_max_bytes=None) for r in realistic_records(rows, seed=11)]
    for rollup in (False, True):
        with tempfile.TemporaryDirectory(prefix="bench-sqlite-writer-") as tmp:
            path = Path(tmp) / "rows.db"
            with sqlite3.connect(path, isolation_level=None) as conn:
                conn.executescript(sqlite_schema("w"))
                if rollup:
                    ensure_sqlite_rollup(conn, "w")
            sink = SqliteSink(str(path), "w")
            sink.connect()
            started = time.perf_counter()
            for start in range(0, rows, 500):
                sink.write(records[start:start + 500])
            elapsed = time.perf_counter() - started
            sink.close()
        print(f"sqlite writer {'with' if rollup else 'without'} the rollups: {rows / elapsed:,.0f} rows/s")


def drop(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        drop_calls_table(conn, table)


def keep_table(args: argparse.Namespace) -> int:
    table = check_table_name(args.keep_table)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        ensure_rollup(conn, table)
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if not rows:
        print(f"filling {table} (postgresql) with {args.rows:,} rows over 90 days ...")
        print(f"  filled in {fill(PostgresSink(PG_URL, table), args.rows):.0f} s")
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for suffix in ("", "_hourly", "_daily"):
                conn.execute(f"VACUUM ANALYZE {table}{suffix}")
    else:
        print(f"{table} has {rows:,} rows (kept from an earlier run; its rows' times are as they were then)")
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        results = time_reports(PG_URL, table, args.repeat, Path(tmp))
    slow = {name: t for name, t in results.items() if t > LIMITS["postgresql"]}
    print(f"{'FAIL' if slow else 'ok'}: every p50 under 300 ms on postgresql"
          + (f" except {', '.join(slow)}" if slow else ""))
    return 1 if slow else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sqlite", action="store_true", help="the embedded SQLite database instead of PostgreSQL")
    parser.add_argument("--writer-rows", type=int, default=0, help="also measure the writer with/without rollup")
    parser.add_argument("--keep-table", metavar="NAME", help="PostgreSQL: fill table NAME unless it has rows, "
                        "and keep it afterwards (re-run the timings without refilling)")
    args = parser.parse_args()
    if args.keep_table and not args.sqlite:
        return keep_table(args)
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        home = Path(tmp)
        table = f"bench_rep_{secrets.token_hex(4)}"
        if args.sqlite:
            db_url = f"sqlite:///{home / 'rows.db'}"
            sink: Any = SqliteSink(str(home / "rows.db"), table)
            with sqlite3.connect(home / "rows.db", isolation_level=None) as conn:
                conn.executescript(sqlite_schema(table))
                ensure_sqlite_rollup(conn, table)  # before the rows: the triggers keep it as they arrive
        else:
            db_url, sink = PG_URL, PostgresSink(PG_URL, table)
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                ensure_rollup(conn, table)  # before the rows: the triggers keep it as they arrive
        kind = "sqlite" if args.sqlite else "postgresql"
        try:
            print(f"filling {table} ({kind}) with {args.rows:,} rows over 90 days ...")
            print(f"  filled in {fill(sink, args.rows):.0f} s")
            if not args.sqlite:
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f"VACUUM ANALYZE {table}")
                    conn.execute(f"VACUUM ANALYZE {table}_hourly")
                    conn.execute(f"VACUUM ANALYZE {table}_daily")
                    hourly = conn.execute(f"SELECT count(*) FROM {table}_hourly").fetchone()[0]
                    daily = conn.execute(f"SELECT count(*) FROM {table}_daily").fetchone()[0]
                print(f"  rollup rows: {hourly:,} hourly, {daily:,} daily")
            results = time_reports(db_url, table, args.repeat, home)
        finally:
            if not args.sqlite:
                drop(PG_URL, table)
        slow = {name: t for name, t in results.items() if t > LIMITS[kind]}
        print(f"{'FAIL' if slow else 'ok'}: every p50 under {LIMITS[kind] * 1000:.0f} ms on {kind}"
              + (f" except {', '.join(slow)}" if slow else ""))
    if args.writer_rows:
        (sqlite_writer_cost if args.sqlite else writer_cost)(args.writer_rows)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
