"""Memory of queued async jobs: RSS of a proxy before and after N `Prefer: respond-async` submissions.

Queued jobs wait in llm_jobs, not in the proxy's memory, so RSS should barely
move however many are queued. The proxy runs one job at a time and the first
job's upstream answer takes a minute, so every other job stays queued.

    .venv/bin/python -m bench.jobs_memory            # 10,000 jobs, keys mode (about a minute)
    .venv/bin/python -m bench.jobs_memory --jobs 2000 --passthrough

Needs PostgreSQL (``$LLM_PROXY_TEST_PG`` or postgresql://postgres@127.0.0.1:5432/test); it works in a
schema of its own and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

WARM_UP = 300
PG = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def submit_many(base: str, key: str, count: int, *, concurrency: int = 16, control: bool = False) -> int:
    """Submit `count` jobs; returns how many got a 202. `control`: as many polls of a job that
    does not exist instead (the same HTTP work and a database read, nothing queued)."""
    accepted = 0
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 20}]}
    headers = {"authorization": f"Bearer {key}", "prefer": "respond-async"}
    async with httpx.AsyncClient(timeout=30) as client:
        queue = iter(range(count))

        async def worker() -> None:
            nonlocal accepted
            for _ in queue:
                if control:
                    answer = await client.get(f"{base}/_llm/jobs/job_{'0' * 32}")
                    accepted += answer.status_code == 404
                    continue
                answer = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                accepted += answer.status_code == 202

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


def measure(base: str, pid: int, key: str, jobs: int, *, control: bool = False) -> tuple[int, int, float]:
    """(RSS KiB after a warm-up, RSS KiB after `jobs` more, seconds the submissions took)."""
    assert asyncio.run(submit_many(base, key, WARM_UP, control=control)) == WARM_UP
    time.sleep(1)
    before = rss_kib(pid)
    started = time.monotonic()
    assert asyncio.run(submit_many(base, key, jobs, control=control)) == jobs
    took = time.monotonic() - started
    time.sleep(1)
    return before, rss_kib(pid), took


def main() -> None:
    from llm_proxy.keys import admin
    from tests.e2e.conftest import Proxy, scenario, write_providers
    from tests.e2e.jobs_support import drop_schema, schema_url, submit
    from tests.fakes.upstream import FakeUpstream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--passthrough", action="store_true", help="passthrough mode (credentials in memory)")
    parser.add_argument("--control", action="store_true",
                        help="first the same number of polls of a missing job, for comparison")
    args = parser.parse_args()
    schema, db = schema_url(PG)
    with tempfile.TemporaryDirectory() as tmp_text, FakeUpstream().start() as upstream:
        tmp = Path(tmp_text)
        providers = write_providers(tmp / "providers.toml", upstream.url)
        extra, key = [], "sk-bench-passthrough"
        if not args.passthrough:
            key = admin.create_key(tmp / "keys.toml", "bench", {})[1]
            extra = ["--set", f"llm_keys={tmp / 'keys.toml'}"]
        proxy = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                       "--set", f"llm_db={db}", "--set", "llm_jobs_concurrent=1", *extra], confdir=tmp / "conf").start()
        try:
            proxy.wait_for_log("llm-proxy writing rows to")
            assert submit(proxy.url, key, headers=scenario(first_delay=600)).status_code == 202  # holds the runner
            if args.control:
                before, after, took = measure(proxy.url, proxy.pid, key, args.jobs, control=True)
                print(f"control: {args.jobs} polls of a missing job in {took:.1f} s: RSS {before / 1024:.1f} MB -> "
                      f"{after / 1024:.1f} MB (+{(after - before) / 1024:.2f} MB)")
            before, after, took = measure(proxy.url, proxy.pid, key, args.jobs)
            print(f"{args.jobs} jobs queued in {took:.1f} s ({args.jobs / took:.0f}/s), "
                  f"{'passthrough' if args.passthrough else 'keys'} mode: RSS {before / 1024:.1f} MB -> "
                  f"{after / 1024:.1f} MB (+{(after - before) / 1024:.2f} MB, "
                  f"{(after - before) * 1024 / args.jobs:.0f} B per job)")
        finally:
            proxy.stop()
            drop_schema(PG, schema)


if __name__ == "__main__":
    main()
