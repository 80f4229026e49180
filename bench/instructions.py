"""Instructions per request, by part of the addon: `python -m bench.instructions`.

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

    .venv/bin/python -m bench.instructions               # 300 requests per stage, about 3 minutes
    .venv/bin/python -m bench.instructions --requests 1000 --pg postgresql://...

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

from bench.services import BIN, DEFAULT_PG, PY, REPO, BenchError
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
_LISTENING = re.compile(r"listening at \S+:(\d+)")
_WARMUP = 100


class Stage:
    def __init__(self, tmp: Path, upstream: str, pg: str, table: str, keys: Path, providers: Path) -> None:
        self.tmp, self.upstream, self.pg, self.table = tmp, upstream, pg, table
        self.keys, self.providers = keys, providers

    def count(self, part: str | None, request: bytes, n: int) -> int:
        """Instructions of `n` calls through a mitmdump running this part, under callgrind."""
        name = part or "bare"
        out = self.tmp / f"callgrind-{name}.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               str(BIN / "mitmdump")]
        if part is not None:
            cmd += ["-s", str(PARTS)]
        cmd += ["--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={self.tmp / f'conf-{name}'}",
                "--set", "flow_detail=0", "--mode", f"reverse:{self.upstream}"]
        if part not in (None, "hooks"):
            cmd += ["--set", f"llm_providers={self.providers}", "--set", f"llm_db={self.pg}",
                    "--set", f"llm_table={self.table}", "--set", f"llm_keys={self.keys}"]
        env = {"LLM_PROXY_HOME": str(self.tmp / f"home-{name}"), "OPENAI_API_KEY": "sk-bench-not-a-real-key",
               "LLM_PROXY_BENCH_PARTS": part or ""}
        proxy = Service(f"mitmdump ({name}) under callgrind", cmd, _LISTENING, env).start(timeout=300)
        try:
            if part not in (None, "hooks"):
                proxy.wait_for_log("llm-proxy writing rows to", timeout=300)
            with socket.create_connection(("127.0.0.1", int(proxy.group)), timeout=60) as conn:
                for _ in range(_WARMUP):
                    _call(conn, request)
                _toggle(proxy, "on")
                for _ in range(n):
                    _call(conn, request)
                _toggle(proxy, "off")
        finally:
            proxy.stop(timeout=120)
        return _total(out)


def _toggle(proxy: Service, state: str) -> None:
    done = subprocess.run(["callgrind_control", "-i", state, str(proxy.pid)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise BenchError(f"callgrind_control -i {state} failed: {done.stdout}{done.stderr}")


def _call(conn: socket.socket, request: bytes) -> None:
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise BenchError("the proxy closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"unexpected answer: {head[:200]!r}")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length is None:
        raise BenchError("the answer has no Content-Length")
    while len(body) < int(length.group(1)):
        body += conn.recv(65536)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="calls counted per stage (default 300)")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL for the writer (default %(default)s)")
    args = parser.parse_args()
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
        body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 32, "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello in one short sentence."}]})
        request = ("POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   f"Authorization: Bearer {secret}\r\n"
                   'x-fake-scenario: {"input":27,"output":9}\r\n'
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        stage = Stage(tmp, upstream.group, args.pg, table, keys, providers)
        counts: list[tuple[str, float]] = []
        for label, part in STAGES:
            print(f"  {label} ...", end="", flush=True)
            per_request = stage.count(part, request, args.requests) / args.requests
            counts.append((label, per_request))
            print(f" {per_request / 1e6:.3f} M instructions per request", flush=True)
        print(report(counts, args.requests))
    finally:
        upstream.stop()
        _drop(args.pg, table)
        shutil.rmtree(tmp, ignore_errors=True)


def report(counts: list[tuple[str, float]], requests: int) -> str:
    """A markdown table: each stage, its increment, and the increment's share of the addon's extra."""
    bare, shipped = counts[0][1], counts[-1][1]
    extra = shipped - bare
    lines = [f"\n### Instructions per request ({requests} calls per stage, callgrind)\n",
             "| stage | M instructions | increment | share of the addon's extra |", "|---|---:|---:|---:|"]
    previous = None
    for label, value in counts:
        if previous is None:
            lines.append(f"| {label} | {value / 1e6:.3f} | | |")
        else:
            step = value - previous
            share = f"{100 * step / extra:.0f}%" if extra > 0 else "-"
            lines.append(f"| {label} | {value / 1e6:.3f} | {step / 1e6:+.3f} | {share} |")
        previous = value
    lines.append(f"\nThe addon as shipped: {100 * extra / bare:+.1f}% instructions over bare mitmdump.")
    lines.append("\nCommand: `.venv/bin/python -m bench.instructions"
                 + (f" --requests {requests}`" if requests != 300 else "`"))
    return "\n".join(lines)


def _drop(pg: str, table: str) -> None:
    try:
        import psycopg

        with psycopg.connect(pg, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_bodies CASCADE")
    except Exception as e:  # cleaning up: say so, go on
        print(f"could not drop table {table}: {e}")


if __name__ == "__main__":
    main()
