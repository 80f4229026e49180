"""Reports run in processes of their own (llm_proxy/control/workers.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llm_proxy.control.params import UsageQuery
from llm_proxy.control.workers import ReportFailed, ReportWorkers
from llm_proxy.record import Record
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink


def test_a_report_runs_in_another_process_and_comes_back_exact(tmp_path: Path) -> None:
    db = tmp_path / "rows.db"
    sink = SqliteSink(str(db), "llm_requests")
    sink.connect()
    now = datetime.now(UTC)
    sink.write([row_values(Record(request_id=f"r{i}", ts=now - timedelta(minutes=i), key_id="alice", model="m",
                                  status=200, cost_usd=Decimal("0.000000000001")), body_max_bytes=None)
                for i in range(3)])
    sink.close()
    workers = ReportWorkers(f"sqlite:///{db}", "llm_requests", workers=1)
    try:
        answer = asyncio.run(workers.run("usage", UsageQuery(now - timedelta(days=1), now + timedelta(minutes=1))))
        pid = asyncio.run(workers.call(os.getpid))
        assert answer["totals"]["requests"] == 3 and answer["totals"]["cost_usd"] == "0.000000000003"
        assert pid == os.getpid()  # keys-file work stays on the proxy's own threads
        with pytest.raises(ReportFailed):
            asyncio.run(workers.run("no_such_report"))
    finally:
        workers.close()


def test_report_processes_leave_with_a_proxy_killed_by_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, multiprocessing, os, sys
        from llm_proxy.control.workers import ReportWorkers
        workers = ReportWorkers("sqlite:///{tmp_path / 'rows.db'}", "llm_requests", workers=2)
        workers.warm_up()
        asyncio.run(workers.call(lambda: None))
        import time; time.sleep(1.5)
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        os.kill(os.getpid(), 9)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    children = [int(p) for p in done.stdout.split()]
    assert len(children) == 2, done.stderr
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in children)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status not in ("Z", "X")
