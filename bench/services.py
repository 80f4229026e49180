"""What a benchmark run stands on: paths, its error, and the machine's CPU counters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.fakes.process import ServiceError

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
