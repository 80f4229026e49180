"""The tables of bench.run: targets, checks against issue 5, markdown report, profile summary."""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUSY_PCT = 25  # CPU % (of one core) used by the rest of the machine above which a window is flagged

TARGETS = {
    "direct": "direct to the fake upstream",
    "bare": "bare mitmdump (no addon)",
    "addon": "mitmdump + addon (PostgreSQL, keys)",
    "outage": "mitmdump + addon, database cut",
    "litellm": "LiteLLM proxy (--litellm)",
}
# The throughput load of each workload (issue 13), and what it is
WORKLOAD_LOAD = {"small": "json", "stream": "sse300", "agent": "agent"}
LOAD_LABEL = {"json": "tiny JSON call", "sse300": "SSE answer of 300 chunks (bare: stream_large_bodies=1)",
              "agent": "coding agent, ~150 KB bodies, growing conversation"}
PROXIES = ("addon", "outage")  # the addon's targets: compared with bare, and their rows checked


# ----------------------------------------------------------------- profile summary

def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Own and inclusive shares per frame (and per thread) from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith(("thread", "process")):  # --threads puts the thread first
            threads[frames.pop(0)] += count
        total += count
        if not frames:
            continue
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count

    def pct(c: int) -> float:
        return round(100 * c / total, 1) if total else 0.0

    return {
        "file": str(path), "samples": total,
        "threads": [(t, pct(c)) for t, c in threads.most_common(6)],
        "own": [(f, pct(c)) for f, c in own.most_common(top)],
        "inclusive": [(f, pct(c)) for f, c in inclusive.most_common(top)],
        # the addon's own code (llm_proxy/ and addon/), by inclusive time
        "addon": [(f, pct(c)) for f, c in inclusive.most_common()
                  if "(llm_proxy/" in f or "(addon/" in f][:top],
    }


def _short(frame: str) -> str:
    """'func (/long/path/site-packages/pkg/mod.py:123)' -> 'func (pkg/mod.py:123)'."""
    m = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not m:
        return frame
    name, file, line = m.groups()
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3.13/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file}:{line})"


# ----------------------------------------------------------------- report

def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{100 * a / b:.1f}%"


def diff(a: float | None, b: float | None, digits: int = 2) -> str:
    return "-" if a is None or b is None else f"{a - b:+.{digits}f}"


def _get(results: dict[str, Any], target: str, load: str, *keys: str) -> Any:
    value: Any = results["targets"].get(target, {}).get("loads", {}).get(load)
    for key in keys:
        if value is None:
            return None
        value = value.get(key)
    return value


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    def g(*k: str) -> Any:
        return _get(results, *k)

    def sub(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    def share(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else 100 * a / b

    def check(name: str, measured: float | None, goal: str, passed: Any, unit: str,
              rounds: list[float] | None = None) -> dict[str, Any]:
        result = "info" if passed == "info" else "-" if measured is None else "PASS" if passed(measured) else "FAIL"
        return {"name": name, "measured": measured, "unit": unit, "goal": goal, "result": result,
                "rounds": rounds or []}

    def by_round(target: str, load: str = "json") -> list[float]:
        """Throughput ratio to bare in each round (the slices of a round ran next to each other)."""
        ours, bare = g(target, load, "rps_rounds") or [], g("bare", load, "rps_rounds") or []
        return [100 * a / b for a, b in zip(ours, bare) if b] if len(ours) > 1 else []

    def times(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    workloads: list[dict[str, Any]] = []
    for workload, load in WORKLOAD_LOAD.items():
        if workload == "small" or g("addon", load, "rps") is None:
            continue
        workloads.append(check(f"{workload} workload throughput vs bare mitmdump ({LOAD_LABEL[load]})",
                               share(g("addon", load, "rps"), g("bare", load, "rps")), ">= 90%",
                               lambda v: v >= 90, "%", by_round("addon", load)))
    for workload, load in WORKLOAD_LOAD.items():
        if g("litellm", load, "rps") is not None:
            workloads.append(check(f"{workload} workload throughput vs LiteLLM",
                                   times(g("addon", load, "rps"), g("litellm", load, "rps")), ">= 8x",
                                   lambda v: v >= 8, "x"))
    bare_rps = g("bare", "json", "rps")
    if bare_rps is None:
        return workloads
    return workloads + [
        check("addon throughput vs bare mitmdump", share(g("addon", "json", "rps"), bare_rps), ">= 90%",
              lambda v: v >= 90, "%", by_round("addon")),
        check(f"added p50 latency ({g('addon', 'json', 'connections')} connections)",
              sub(g("addon", "json", "latency_ms", "p50"), g("bare", "json", "latency_ms", "p50")), "< 1 ms",
              lambda v: v < 1, "ms"),
        check("first streamed chunk, added delay (p50)",
              sub(g("addon", "stream", "first_chunk_ms", "p50"), g("bare", "stream", "first_chunk_ms", "p50")),
              "< 5 ms", lambda v: v < 5, "ms"),
        check("writer rows/s into PostgreSQL", results.get("writer", {}).get("rows_per_s"), ">= 20,000",
              lambda v: v >= 20_000, "rows/s"),
        check("throughput during a database outage vs bare", share(g("outage", "json", "rps"), bare_rps),
              ">= 90%", lambda v: v >= 90, "%", by_round("outage")),
        check("CPU per request, bare / addon (throughput ratio if the proxy's CPU is the limit)",
              share(g("bare", "json", "cpu_ms_per_request", "proxy"),
                    g("addon", "json", "cpu_ms_per_request", "proxy")),
              "(>= 90%)", "info", "%"),
        check("added p50 latency, 1 connection",
              sub(g("addon", "single", "latency_ms", "p50"), g("bare", "single", "latency_ms", "p50")),
              "(< 1 ms)", "info", "ms"),
        check("last streamed chunk, added delay (p50)",
              sub(g("addon", "stream", "latency_ms", "p50"), g("bare", "stream", "latency_ms", "p50")),
              "-", "info", "ms"),
    ]


def report(results: dict[str, Any]) -> str:
    def g(*k: str) -> Any:
        return _get(results, *k)

    def cpu(target: str, load: str) -> str:
        c = g(target, load, "cpu_pct") or {}
        return " / ".join(fmt(c.get(k), 0) for k in ("proxy", "upstream", "loadgen", "rest", "steal"))

    def cost(target: str, load: str) -> str:
        c = g(target, load, "cpu_ms_per_request") or {}
        if target == "direct":
            return f"({fmt(c.get('upstream'), 2)} upstream)"
        return f"{fmt(c.get('proxy'), 2)} ({fmt(c.get('proxy_loop'), 2)})"

    def spread(target: str, load: str) -> str:
        rounds = g(target, load, "rps_rounds") or []
        return f"{min(rounds):,.0f}-{max(rounds):,.0f}" if len(rounds) > 1 else "-"

    targets = [t for t in TARGETS if t in results["targets"]]
    cfg = results["config"]
    per = f"{cfg['duration']:g} s per target" + (f" in {cfg['rounds']} rounds" if cfg["rounds"] > 1 else "")
    cpu_head = "CPU % proxy / upstream / loadgen / rest / stolen"
    lines: list[str] = []
    if results.get("profiled"):
        lines += ["**Profiled run (py-spy sampled the addon proxy during one json slice): the addon's numbers "
                  "are distorted.**", ""]
    small_from = len(lines)  # the small workload's three tables start here
    lines += [f"### Non-streamed chat completions: {cfg['connections']} keep-alive connections, closed loop, {per}",
              "", "| target | req/s | vs bare | req/s by round | p50 ms | p99 ms | added p50 ms | errors "
                  f"| proxy CPU ms/req (event loop) | {cpu_head} |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t in targets:
        rps, p50 = g(t, "json", "rps"), g(t, "json", "latency_ms", "p50")
        lines.append(
            f"| {TARGETS[t]} | {fmt(rps, 0)} | {ratio(rps, g('bare', 'json', 'rps')) if t != 'direct' else '-'} "
            f"| {spread(t, 'json')} | {fmt(p50, 2)} | {fmt(g(t, 'json', 'latency_ms', 'p99'), 2)} "
            f"| {diff(p50, g('bare', 'json', 'latency_ms', 'p50')) if t in PROXIES else '-'} "
            f"| {g(t, 'json', 'errors')} | {cost(t, 'json')} | {cpu(t, 'json')} |")
    lines += ["", f"### Non-streamed, 1 connection (latency without queueing), {per}", "",
              f"| target | req/s | p50 ms | p99 ms | added p50 ms | errors | proxy CPU ms/req (event loop) "
              f"| {cpu_head} |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in targets:
        p50 = g(t, "single", "latency_ms", "p50")
        lines.append(
            f"| {TARGETS[t]} | {fmt(g(t, 'single', 'rps'), 0)} | {fmt(p50, 3)} "
            f"| {fmt(g(t, 'single', 'latency_ms', 'p99'), 3)} "
            f"| {diff(p50, g('bare', 'single', 'latency_ms', 'p50'), 3) if t in PROXIES else '-'} "
            f"| {g(t, 'single', 'errors')} | {cost(t, 'single')} | {cpu(t, 'single')} |")
    lines += ["", f"### Streamed chat completions (20 deltas 20 ms apart): {cfg['stream_connections']} connections, "
                  f"{per}", "",
              "First chunk: the first body chunk; last: the end of the stream. Bare mitmdump runs here with "
              "`--set stream_large_bodies=1` (by default it buffers the whole stream).", "",
              "| target | streams | first chunk p50 ms | p99 ms | added ms | last chunk p50 ms | p99 ms "
              f"| added ms | errors | {cpu_head} |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t in targets:
        first, last = g(t, "stream", "first_chunk_ms", "p50"), g(t, "stream", "latency_ms", "p50")
        cmp_ = t in PROXIES
        lines.append(
            f"| {TARGETS[t]} | {g(t, 'stream', 'requests')} | {fmt(first, 2)} "
            f"| {fmt(g(t, 'stream', 'first_chunk_ms', 'p99'), 2)} "
            f"| {diff(first, g('bare', 'stream', 'first_chunk_ms', 'p50')) if cmp_ else '-'} "
            f"| {fmt(last, 1)} | {fmt(g(t, 'stream', 'latency_ms', 'p99'), 1)} "
            f"| {diff(last, g('bare', 'stream', 'latency_ms', 'p50')) if cmp_ else '-'} "
            f"| {g(t, 'stream', 'errors')} | {cpu(t, 'stream')} |")
    if not any(g(t, "json", "rps") is not None for t in targets):
        del lines[small_from:]  # workload `small` was not run
    w = results.get("writer")
    if w:
        lines += ["", "### Writer alone (Writer + PostgresSink, in-process)", "",
                  "| rows | seconds | rows/s | of which putting s | dropped | failed batches | machine CPU % "
                  "| stolen % |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {w['rows']:,} | {w['seconds']:.2f} | {w['rows_per_s']:,.0f} | {w['put_s']:.2f} "
                  f"| {w['rows_dropped']} "
                  f"| {w['batches_failed']} | {fmt(w['machine_cpu_pct'], 0)} | {fmt(w['steal_pct'], 0)} |"]
    lines += workload_table(results)
    lines += ["", "### Targets (issues 5 and 13)", "", "| target | measured | goal | result | by round |",
              "|---|---:|---|---|---|"]
    for c in results["checks"]:
        unit = c["unit"]
        value = "-" if c["measured"] is None else (
            f"{c['measured']:,.0f} rows/s" if unit == "rows/s" else
            f"{c['measured']:.1f}%" if unit == "%" else f"{c['measured']:.1f}x" if unit == "x" else
            f"{c['measured']:+.2f} ms")
        rounds = " / ".join(f"{v:.0f}%" for v in c["rounds"]) or "-"
        lines.append(f"| {c['name']} | {value} | {c['goal']} | {c['result']} | {rounds} |")
    lines.append("")
    for t in PROXIES:
        rows = results["targets"].get(t, {}).get("rows")
        if rows:
            extra = (f"; backlog written {rows['backlog_s']:.1f} s after the database came back"
                     if "backlog_s" in rows else "")
            lines.append(f"Rows ({t}): {rows['rows']} in the table for {rows['calls']} calls "
                         f"({'OK' if rows['ok'] else 'MISMATCH'}){extra}.")
    busy = [f"{t}/{load} {r['busy_windows']}" for t in targets
            for load, r in results["targets"][t]["loads"].items() if r["busy_windows"]]
    if busy:
        lines += ["", f"**Warning: the rest of the machine used over {BUSY_PCT}% of a core in some windows** "
                      f"(PostgreSQL included; % per window): {', '.join(busy)}. Those numbers may be noisy."]
    if results["errors"]:
        lines += ["", f"**FLAGGED: {results['errors']} failed requests**: "
                      + "; ".join(f"{t}/{load}: {r['error_kinds']}" for t in targets
                                  for load, r in results["targets"][t]["loads"].items() if r["errors"])]
    m = results["machine"]
    lines += ["", f"Command: `{results['command']}`", "",
              f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['platform']}, Python {m['python']}, "
              f"mitmproxy {m['mitmproxy']}, PostgreSQL {results.get('postgres', '?')}; "
              f"the run took {results.get('wall_s', 0):.0f} s."]
    prof = results.get("profile")
    if prof:
        lines += ["", "### Profile of the addon proxy (py-spy, one json slice)", ""]
        if "error" in prof:
            lines.append(prof["error"])
        else:
            lines.append(f"{prof['samples']} samples (non-idle); raw stacks: {prof['file']}")
            if prof["threads"]:
                lines.append("by thread: " + ", ".join(f"{t} {p}%" for t, p in prof["threads"]))
            lines += ["", "| own % | frame |", "|---:|---|"]
            lines += [f"| {p} | `{f}` |" for f, p in prof["own"]]
            lines += ["", "| inclusive % | frame |", "|---:|---|"]
            lines += [f"| {p} | `{f}` |" for f, p in prof["inclusive"]]
            lines += ["", "| inclusive % | the addon's own frames |", "|---:|---|"]
            lines += [f"| {p} | `{f}` |" for f, p in prof["addon"]]
    return "\n".join(lines)


def workload_table(results: dict[str, Any]) -> list[str]:
    """Issue 13's table: each workload's throughput, bare mitmdump against the addon (and LiteLLM)."""
    def g(*k: str) -> Any:
        return _get(results, *k)

    rows = [(w, load) for w, load in WORKLOAD_LOAD.items() if g("addon", load, "rps") is not None]
    if not rows:
        return []
    cfg = results["config"]
    lines = ["", f"### Workloads: throughput against bare mitmdump, {cfg['connections']} connections, bodies stored",
             "", "| workload | bare req/s | addon req/s | addon ÷ bare | by round | LiteLLM req/s | LiteLLM ÷ bare "
                 "| proxy CPU ms/req bare / addon |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, load in rows:
        bare, addon, lite = g("bare", load, "rps"), g("addon", load, "rps"), g("litellm", load, "rps")
        ours, theirs = g("addon", load, "rps_rounds") or [], g("bare", load, "rps_rounds") or []
        rounds = " / ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs) if b) if len(ours) > 1 else "-"
        cpu_bare = (g("bare", load, "cpu_ms_per_request") or {}).get("proxy")
        cpu_addon = (g("addon", load, "cpu_ms_per_request") or {}).get("proxy")
        lines.append(f"| {workload}: {LOAD_LABEL[load]} | {fmt(bare, 0)} | {fmt(addon, 0)} "
                     f"| {fmt(addon / bare if addon is not None and bare else None, 2)} | {rounds} | {fmt(lite, 0)} "
                     f"| {fmt(lite / bare if lite is not None and bare else None, 2)} "
                     f"| {fmt(cpu_bare, 2)} / {fmt(cpu_addon, 2)} |")
    return lines


def machine() -> dict[str, Any]:
    try:
        from mitmproxy.version import VERSION as mitm_version
    except ImportError:
        mitm_version = "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "mitmproxy": mitm_version, "platform": platform.platform()}


def pool(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One load's slices (rounds) as one measurement."""
    from bench.load import summarize

    duration = sum(s["duration_s"] for s in slices)
    requests = sum(s["requests"] for s in slices)
    window = sum(s["window_s"] for s in slices)
    errors: Counter[str] = Counter()
    for s in slices:
        errors.update(s["error_kinds"])
    cpu: dict[str, float | None] = {}
    for name in ("proxy", "upstream", "loadgen", "rest", "steal"):
        values = [s["cpu_s"].get(name) for s in slices]
        known = [v for v in values if v is not None]
        cpu[name] = 100 * sum(known) / window if len(known) == len(values) and window > 0 else None

    def per_request(name: str) -> float | None:
        values = [s["cpu_s"].get(name) for s in slices]
        if not requests or any(v is None for v in values):
            return None
        return 1000 * sum(values) / requests  # type: ignore[arg-type]

    return {
        "connections": slices[0]["connections"],
        # CPU ms per request: of the proxy (and of its event-loop thread), else of the upstream
        "cpu_ms_per_request": {name: per_request(name) for name in ("proxy", "proxy_loop", "upstream")},
        "duration_s": duration,
        "requests": requests,
        "rps": requests / duration if duration > 0 else 0.0,
        "rps_rounds": [s["rps"] for s in slices],
        "latency_ms": summarize([us / 1e6 for s in slices for us in s["latency_us"]]),
        "first_chunk_ms": summarize([us / 1e6 for s in slices for us in s["first_chunk_us"]]),
        "errors": sum(s["errors"] for s in slices),
        "error_kinds": dict(errors),
        "calls_completed": sum(s["calls_completed"] for s in slices),
        "cpu_pct": cpu,
        "busy_windows": [round(100 * s["cpu_s"]["rest"] / s["window_s"]) for s in slices
                         if s["cpu_s"].get("rest") is not None and s["window_s"] > 0
                         and 100 * s["cpu_s"]["rest"] / s["window_s"] > BUSY_PCT],
    }
