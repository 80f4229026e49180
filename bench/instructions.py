"""Instructions per request, by part of the addon and by workload: `python -m bench.instructions`.

Throughput on a shared 2-core VM moves by ±10% between runs, too much to see
what one part of the addon costs. Instruction counts do not move: this runs
each mitmdump under valgrind's callgrind with instrumentation off, warms it
up, then counts the instructions (all threads, user space) of N non-streamed
chat completions sent one after another on one keep-alive connection, in
reverse mode to the fake upstream. Stages (see `bench/parts.py`): bare
mitmdump; a do-nothing addon with the same hooks; the addon loaded with
no-op hooks; plus its request hook; plus the end of a call (usage, price,
Record); plus the writer (COPY into PostgreSQL) = the addon as shipped, with
virtual keys on. Each stage's increment is that part's cost per request.

    .venv/bin/python -m bench.instructions               # every workload, about 10 minutes
    .venv/bin/python -m bench.instructions --workload small --requests 1000 --pg postgresql://...

Workloads (``--workload small,stream,agent``, default all; see `bench/workloads.py`):
``small`` counts every stage above over ``--requests`` calls (default 300);
``stream`` (300-chunk SSE answers; bare mitmdump with ``--set
stream_large_bodies=1``, which passes chunks on as the addon does) and
``agent`` (~150 KB coding-agent bodies, the conversation growing call by
call) count bare, request hook, end of call and the addon as shipped over a
third as many calls. From the differences to ``small`` come the stream
meter's cost per chunk (the addon's extra over bare without the writer, less
small's, over 300 chunks: metering each chunk and rebuilding the answer) and the request
side's cost per KB of request body (the request hook's increment over bare,
less small's, per KB more), and the writer's per KB of body.

Instructions are not time (cache misses, the GIL handed between threads and
system calls are not in them), so this attributes the addon's cost; the
throughput ratio comes from `bench.run`. Needs valgrind (Debian: valgrind).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.services import BIN, DEFAULT_PG, PY, REPO, BenchError
from bench.workloads import STREAM_CHUNKS, WORKLOADS, bodies, parse_workloads, scenario
from tests.fakes.process import Service

PARTS = REPO / "bench" / "parts.py"
STAGES = (  # (label, LLM_PROXY_BENCH_PARTS or None for bare mitmdump)
    ("bare mitmdump", None),
    ("+ mitmproxy dispatching four no-op hooks", "hooks"),
    ("+ the addon loaded (writer, relay, keys watcher), hooks no-ops", "loaded"),
    ("+ request hook (route, key check, credentials)", "request"),
    ("+ end of call (usage, price, Record)", "response"),
    ("+ writer (COPY into PostgreSQL) = the addon as shipped", "all"),
)
# The big workloads count fewer stages: enough to attribute their extra cost.
SHORT_STAGES = tuple(s for s in STAGES if s[1] in (None, "request", "response", "all"))
_LISTENING = re.compile(r"listening at \S+:(\d+)")
_WARMUP = 100


class Stage:
    def __init__(self, tmp: Path, upstream: str, pg: str, table: str, keys: Path, providers: Path) -> None:
        self.tmp, self.upstream, self.pg, self.table = tmp, upstream, pg, table
        self.keys, self.providers = keys, providers

    def count(self, part: str | None, requests: list[bytes], n: int, extra: tuple[str, ...] = (),
              warmup: int = _WARMUP) -> int:
        """Instructions of `n` calls (cycling through `requests`) through a mitmdump running
        this part, under callgrind."""
        name = f"{part or 'bare'}-{secrets.token_hex(3)}"
        out = self.tmp / f"callgrind-{name}.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               str(BIN / "mitmdump")]
        if part is not None:
            cmd += ["-s", str(PARTS)]
        cmd += ["--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={self.tmp / f'conf-{name}'}",
                "--set", "flow_detail=0", "--mode", f"reverse:{self.upstream}", *extra]
        if part not in (None, "hooks"):
            cmd += ["--set", f"llm_providers={self.providers}", "--set", f"llm_db={self.pg}",
                    "--set", f"llm_table={self.table}", "--set", f"llm_keys={self.keys}"]
        env = {"LLM_PROXY_HOME": str(self.tmp / f"home-{name}"), "OPENAI_API_KEY": "sk-bench-not-a-real-key",
               "LLM_PROXY_BENCH_PARTS": part or ""}
        proxy = Service(f"mitmdump ({name}) under callgrind", cmd, _LISTENING, env).start(timeout=300)
        try:
            if part not in (None, "hooks"):
                proxy.wait_for_log("llm-proxy writing rows to", timeout=300)
            with socket.create_connection(("127.0.0.1", int(proxy.group)), timeout=120) as conn:
                reader = conn.makefile("rb")
                for i in range(warmup):
                    _call(conn, reader, requests[i % len(requests)])
                _toggle(proxy, "on")
                for i in range(n):
                    _call(conn, reader, requests[i % len(requests)])
                _toggle(proxy, "off")
        finally:
            proxy.stop(timeout=120)
        return _total(out)


def _toggle(proxy: Service, state: str) -> None:
    done = subprocess.run(["callgrind_control", "-i", state, str(proxy.pid)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise BenchError(f"callgrind_control -i {state} failed: {done.stdout}{done.stderr}")


def _call(conn: socket.socket, reader: Any, request: bytes) -> None:
    """Send one request and read its whole answer (Content-Length or chunked)."""
    conn.sendall(request)
    status = reader.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"unexpected answer: {status[:200]!r}")
    length, chunked = 0, False
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if not chunked:
        if len(reader.read(length)) != length:
            raise BenchError("the proxy closed the connection")
        return
    while True:
        size = int(reader.readline().split(b";")[0], 16)
        if size == 0:
            while reader.readline() not in (b"\r\n", b""):
                pass
            return
        reader.read(size + 2)


def _total(out: Path) -> int:
    """The instruction total over every part file callgrind wrote (one per thread or dump)."""
    total = 0
    for path in out.parent.glob(out.name + "*"):
        for line in path.read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if total == 0:
        raise BenchError(f"callgrind counted nothing in {out}")
    return total


def http_requests(workload: str, secret: str) -> list[bytes]:
    """The raw HTTP/1.1 requests of a workload, as the load generator of bench.run sends them."""
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {secret}\r\n"
            f"x-fake-scenario: {json.dumps(scenario(workload), separators=(',', ':'))}\r\n")
    if workload == "stream":
        head += "Accept: text/event-stream\r\n"
    return [(head + f"Content-Length: {len(body.encode())}\r\n\r\n").encode() + body.encode()
            for body in bodies(workload)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="calls counted per stage of `small` (default 300); `stream` and `agent` count a third")
    parser.add_argument("--workload", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads out of {', '.join(WORKLOADS)} (default all)")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL for the writer (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    parser.add_argument("--warmup", type=int, default=_WARMUP,
                        help=f"calls before counting starts, per stage (default {_WARMUP})")
    parser.add_argument("--bare-from", metavar="PATH",
                        help="take bare mitmdump's counts from an earlier run's --json instead of counting them "
                             "again (bare mitmdump runs none of our code: before/after comparisons)")
    parser.add_argument("--parts", help="comma-separated stages to count (hooks, loaded, request, response, all); "
                                        "default: every stage of each workload")
    args = parser.parse_args()
    earlier = json.loads(Path(args.bare_from).read_text())["counts"] if args.bare_from else {}
    parts = set(args.parts.split(",")) if args.parts else None
    try:
        workloads = parse_workloads(args.workload)
    except ValueError as e:
        parser.error(str(e))
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.instructions needs valgrind (Debian: apt install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="llm-proxy-instructions-"))
    table = f"bench_{secrets.token_hex(5)}"
    upstream = Service("fake upstream", [PY, "-m", "tests.fakes.upstream", "--port", "0", "--delay", "0"],
                       re.compile(r"listening on (http://\S+)")).start()
    try:
        keys = tmp / "keys.toml"
        created = subprocess.run([str(BIN / "llm-proxy"), "keys", "--keys-file", str(keys), "create", "bench"],
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
        secret = created.stdout.strip()
        if created.returncode != 0 or not secret.startswith("llmp-"):
            raise BenchError(f"llm-proxy keys create failed: {created.stdout}{created.stderr}")
        providers = tmp / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "{upstream.group}"\nformat = "openai"\n'
                             'api_key_env = "OPENAI_API_KEY"\n')
        stage = Stage(tmp, upstream.group, args.pg, table, keys, providers)
        results: dict[str, list[tuple[str, str | None, float]]] = {}
        sizes: dict[str, float] = {}
        for workload in workloads:
            requests = http_requests(workload, secret)
            sizes[workload] = sum(len(r.partition(b"\r\n\r\n")[2]) for r in requests) / len(requests)
            n = args.requests if workload == "small" else max(10, args.requests // 3)
            print(f"{workload}: {n} calls per stage", flush=True)
            counts: list[tuple[str, str | None, float]] = []
            for label, part in (STAGES if workload == "small" else SHORT_STAGES):
                if part is None and workload in earlier:
                    counts.append((label, part, earlier[workload][0][2]))
                    print(f"  {label}: {earlier[workload][0][2] / 1e6:.3f} M (from {args.bare_from})")
                    continue
                if part is not None and parts is not None and part not in parts:
                    continue
                print(f"  {label} ...", end="", flush=True)
                extra = ("--set", "stream_large_bodies=1") if workload == "stream" and part is None else ()
                per_request = stage.count(part, requests, n, extra, args.warmup) / n
                counts.append((label, part, per_request))
                print(f" {per_request / 1e6:.3f} M instructions per request", flush=True)
            results[workload] = counts
            print(report(workload, counts, n))
        print(summary(results, sizes, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"counts": results, "body_bytes": sizes}, indent=2))
    finally:
        upstream.stop()
        _drop(args.pg, table)
        shutil.rmtree(tmp, ignore_errors=True)


def report(workload: str, counts: list[tuple[str, str | None, float]], requests: int) -> str:
    """A markdown table: each stage, its increment, and the increment's share of the addon's extra."""
    bare, shipped = counts[0][2], counts[-1][2]
    extra = shipped - bare
    lines = [f"\n### Instructions per request, workload `{workload}` ({requests} calls per stage, callgrind)\n",
             "| stage | M instructions | increment | share of the addon's extra |", "|---|---:|---:|---:|"]
    previous = None
    for label, _, value in counts:
        if previous is None:
            lines.append(f"| {label} | {value / 1e6:.3f} | | |")
        else:
            step = value - previous
            share = f"{100 * step / extra:.0f}%" if extra > 0 else "-"
            lines.append(f"| {label} | {value / 1e6:.3f} | {step / 1e6:+.3f} | {share} |")
        previous = value
    lines.append(f"\nThe addon as shipped: {100 * extra / bare:+.1f}% instructions over bare mitmdump "
                 f"(bare / addon = {bare / shipped:.2f}).")
    return "\n".join(lines)


def summary(results: dict[str, list[tuple[str, str | None, float]]], sizes: dict[str, float],
            args: argparse.Namespace) -> str:
    """bare / addon per workload, and the per-chunk and per-KB costs derived from the stages."""

    def stage(workload: str, part: str | None) -> float:
        found = [v for _, p, v in results[workload] if p == part]
        if not found:
            raise LookupError(part)
        return found[0]

    lines = ["\n### Summary: instructions per request (M), bare mitmdump vs the addon as shipped\n",
             "| workload | bare | addon | bare / addon |", "|---|---:|---:|---:|"]
    for workload, counts in results.items():
        bare, addon = counts[0][2], counts[-1][2]
        lines.append(f"| {workload} | {bare / 1e6:.3f} | {addon / 1e6:.3f} | {bare / addon:.2f} |")
    try:
        lines += derived(results, sizes, stage)
    except LookupError:
        pass  # a stage it needs was not counted (--parts)
    command = "`.venv/bin/python -m bench.instructions"
    if args.workload != ",".join(WORKLOADS):
        command += f" --workload {args.workload}"
    if args.requests != 300:
        command += f" --requests {args.requests}"
    lines.append(f"\nCommand: {command}`")
    return "\n".join(lines)


def derived(results: dict[str, list[tuple[str, str | None, float]]], sizes: dict[str, float],
            stage: Any) -> list[str]:
    """The stream meter's cost per chunk and the request side's and writer's per KB."""
    lines: list[str] = []
    if "small" in results and "stream" in results:
        # The meter runs from the responseheaders hook: its cost is in every stage from `request` on.
        meter = (stage("stream", "response") - stage("stream", None)) - (stage("small", "response")
                                                                         - stage("small", None))
        lines.append(f"\nStream meter: {meter / STREAM_CHUNKS:,.0f} instructions per chunk (the addon's extra "
                     "without the writer, less small's, over 300 chunks: metering each chunk as it passes "
                     "and rebuilding the answer once).")
    if "small" in results and "agent" in results:
        kb = (sizes["agent"] - sizes["small"]) / 1024
        request_small = stage("small", "request") - stage("small", None)
        request_agent = stage("agent", "request") - stage("agent", None)
        writer_small = stage("small", "all") - stage("small", "response")
        writer_agent = stage("agent", "all") - stage("agent", "response")
        lines.append(f"\nRequest side: {(request_agent - request_small) / kb:,.0f} instructions per KB of request "
                     f"body (the request hook; agent bodies average {sizes['agent'] / 1024:.0f} KB); writer: "
                     f"{(writer_agent - writer_small) / kb:,.0f} per KB of body stored.")
    return lines


def _drop(pg: str, table: str) -> None:
    try:
        import psycopg

        with psycopg.connect(pg, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_bodies CASCADE")
    except Exception as e:  # cleaning up: say so, go on
        print(f"could not drop table {table}: {e}")


if __name__ == "__main__":
    main()
