"""What a benchmark run stands on: paths, its error, and the machine's CPU counters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.process import Service, ServiceError

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "addon" / "llm_proxy.py"
PY = sys.executable
BIN = Path(sys.executable).parent
DEFAULT_PG = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class BenchError(ServiceError):
    """The benchmark cannot go on (a service or the database is missing, a load failed)."""


def system_cpu() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine so far, all cores (Linux /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def stop_all(children: list[subprocess.Popen[str]], services: list[Service], timeout: float = 15) -> None:
    """Kill the benchmark's own child processes, then stop its services newest first;
    keeps going whatever fails (a clean-up must clean up)."""
    for proc in children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    children.clear()
    for service in reversed(services):
        try:
            service.stop(timeout=timeout)
        except Exception as e:  # keep cleaning
            print(f"could not stop {service.name}: {e}", file=sys.stderr)
    services.clear()


def drop_bench_table(pg_url: str, table: str) -> None:
    """Drop a benchmark's calls table and the control plane's rollup beside it; never raises."""
    try:
        import psycopg

        from llm_proxy.control.reports import drop_calls_table

        with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
            drop_calls_table(conn, table)
    except Exception as e:
        print(f"could not drop table {table}: {e}", file=sys.stderr)
