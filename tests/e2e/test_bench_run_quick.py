"""bench.run's new workloads in small: the 300-chunk stream and the coding agent's bodies go
through bare mitmdump and the addon, every call succeeds, every call has its row, and the
report carries issue 13's ratios.

The ratios themselves need a quiet machine and the full sizes (`python -m bench.run`); here
the benchmark's machinery runs end to end on tiny ones.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.services import PY, REPO
from bench.workloads import AGENT_CALLS, bodies, parse_workloads

TINY = ["--quick", "--workload", "stream,agent", "--duration", "0.5", "--warmup", "0.2", "--rows", "200"]


def test_quick_run_of_the_stream_and_agent_workloads(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run([PY, "-m", "bench.run", *TINY, "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a ratio missed on a busy machine
    results = json.loads(out.read_text())
    assert set(results["targets"]) == {"direct", "bare", "addon"}  # the outage proxy runs only under `small`
    for target in ("direct", "bare", "addon"):
        loads = results["targets"][target]["loads"]
        assert set(loads) == {"sse300", "agent"}
        for load in loads.values():
            assert load["requests"] > 0 and load["errors"] == 0
    assert results["targets"]["addon"]["rows"]["ok"] is True
    names = [c["name"] for c in results["checks"]]
    assert any(n.startswith("stream workload throughput vs bare") for n in names)
    assert any(n.startswith("agent workload throughput vs bare") for n in names)
    assert "### Workloads: throughput against bare mitmdump" in done.stdout
    assert "Non-streamed chat completions" not in done.stdout  # `small` was not asked for


def test_unknown_workload_is_refused() -> None:
    done = subprocess.run([PY, "-m", "bench.run", "--workload", "small,huge"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown workload(s) huge" in done.stderr


def test_agent_session_resends_a_growing_conversation() -> None:
    session = [json.loads(b) for b in bodies("agent")]
    assert len(session) == AGENT_CALLS
    sizes = [len(b) for b in bodies("agent")]
    assert sizes == sorted(sizes) and 140_000 < sum(sizes) / len(sizes) < 160_000
    for earlier, later in zip(session, session[1:]):
        assert later["messages"][:len(earlier["messages"])] == earlier["messages"]
        assert len(later["messages"]) == len(earlier["messages"]) + 2
    assert parse_workloads("agent, small,agent") == ["agent", "small"]
