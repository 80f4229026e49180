"""Soak test: does the proxy's memory level off under a long run of mixed calls?

Usage (from the repo root; loopback only; stops by itself)::

    .venv/bin/python -m bench.soak                      # 300,000 calls, 8 clients, SQLite
    .venv/bin/python -m bench.soak --calls 20000        # a few minutes' check while developing
    .venv/bin/python -m bench.soak --db postgresql://postgres@127.0.0.1:5432/test

Options: ``--calls N`` (default 300,000), ``--clients C`` keep-alive
connections (default 8), ``--db URL`` (default: an SQLite file in a temp dir;
a ``postgresql://`` URL gets a fresh table ``soak_<random>``, dropped at the
end), ``--sample S`` seconds between RSS samples (default 2),
``--max-seconds T`` (default 120 + calls / 100): the run is cut there and
counts as broken.

What it does:

1. A temp dir with a keys file made by the real CLI (``llm-proxy keys
   create``): ``free`` (no limits), ``limited`` (rpm, tpm and parallel too high
   to refuse: windows are kept), ``budgeted`` (a budget never reached) and
   ``tight`` (``--rpm 60``: most of its calls are refused); a providers.toml
   sending ``openai`` and ``anthropic`` to the fake upstream, with an alias
   ``fast`` (primary ``openai:fake-primary``, which always fails with 503,
   falling back across formats to ``anthropic:claude-fallback``: the relay,
   the translation and an open circuit breaker) and a glob ``glob-*`` with a
   fallback (the relay again, with a new model name on every call).
2. Starts the fake upstream (``tests/fakes/upstream.py``, forgetting the
   requests it records every second) and ``mitmdump -s addon/llm_proxy.py``
   in reverse mode, keys on, its rows going to ``--db``.
3. Drives ``--calls`` calls from a process of its own (raw asyncio
   HTTP/1.1, ``--clients`` connections, closed loop), in a fixed rotation
   (see ``MIX``): OpenAI chat JSON and streamed (the proxy injects
   ``include_usage``), Anthropic messages, relayed alias (JSON and streamed),
   invented models (a new one on every call), unknown keys (a new one on
   every call), no key, over the rpm limit, and a body that is not JSON. Every call carries ``?soak=<n>`` so its row can be told
   apart.
4. Samples the proxy's RSS (``VmRSS`` of ``/proc/<pid>/status``) every
   ``--sample`` seconds, with the number of calls answered so far.
5. Stops the proxy (SIGTERM flushes its rows) and checks that the table holds
   exactly one row per answered call (row count and distinct ``path``), and
   that every class of call got the statuses it should.

Verdict: the run's calls are split in thirds; the RSS at each boundary is
the median of the samples nearest to it. Memory levels off when the last
third grows by at most ``max(2 MB, 20 bytes x its calls)`` (2 MB for 300,000
calls; the leak of issue 8 grew 280 bytes a call). The first third is
warm-up (pools, memos and the 60-second windows filling), the middle third is
printed for comparison. Fewer than 30,000 calls are too few for the
threshold to mean anything: the verdict is then "too short" and does not
fail. Exit status: 0 memory levels off and every row check passes; 1 RSS
kept growing or a row check failed; 2 the run broke (a service did not
start, the time ran out, the client saw connection errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.services import ADDON, BIN, PY, REPO, BenchError, drop_bench_table, stop_all
from tests.fakes.process import LISTENING, Service, ServiceError

MIN_CALLS_FOR_VERDICT = 30_000
FLOOR_BYTES = 2 << 20
BYTES_PER_CALL = 20
CALL_MARK = "@N@"  # replaced by the call's number in path, headers and body
TIGHT_RPM = 60

KEYS = {  # name -> `llm-proxy keys create` limits
    "free": [],
    "limited": ["--rpm", "100000000", "--tpm", "1000000000000", "--parallel", "64"],
    "budgeted": ["--budget", "1000000"],
    "tight": ["--rpm", str(TIGHT_RPM)],
}

PROVIDERS = """\
[providers.openai]
base_url = "{url}"
format = "openai"
api_key_env = "OPENAI_API_KEY"

[providers.anthropic]
base_url = "{url}"
format = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
hosts = ["anthropic.invalid"]

[models.fast]
target = "openai:fake-primary"
fallbacks = ["anthropic:claude-fallback"]

[models."glob-*"]
fallbacks = ["openai:fake-model"]
"""

_CHAT = '{"model": "%s", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 16%s}'
_FAIL_PRIMARY = json.dumps({"only_model": "fake-primary", "status": 503})


@dataclass(frozen=True)
class Kind:
    """One class of call in the rotation: the request, and the statuses it must get."""

    name: str
    weight: int
    path: str
    body: str
    key: str | None  # a KEYS name, "unknown", or None for no key
    expect: frozenset[int]
    headers: dict[str, str] = field(default_factory=dict)
    anthropic: bool = False


MIX = (
    Kind("json", 4, "/v1/chat/completions", _CHAT % ("fake-model", ""), "free", frozenset({200})),
    Kind("json-limited", 3, "/v1/chat/completions", _CHAT % ("fake-model", ""), "limited", frozenset({200})),
    Kind("stream", 3, "/v1/chat/completions", _CHAT % ("fake-model", ', "stream": true'), "free",
         frozenset({200}), {"x-fake-scenario": '{"deltas": 3, "delay": 0}'}),
    Kind("anthropic", 1, "/anthropic/v1/messages", _CHAT % ("claude-soak", ""), "budgeted", frozenset({200}),
         {"anthropic-version": "2023-06-01"}, anthropic=True),
    Kind("relayed", 2, "/v1/chat/completions", _CHAT % ("fast", ""), "limited", frozenset({200}),
         {"x-fake-scenario": _FAIL_PRIMARY}),
    Kind("relayed-stream", 1, "/v1/chat/completions", _CHAT % ("fast", ', "stream": true'), "limited",
         frozenset({200}), {"x-fake-scenario": _FAIL_PRIMARY}),
    Kind("invented-model", 1, "/v1/chat/completions", _CHAT % ("glob-" + CALL_MARK, ""), "free", frozenset({200})),
    Kind("unknown-key", 1, "/v1/chat/completions", _CHAT % ("fake-model", ""), "unknown", frozenset({401})),
    Kind("no-key", 1, "/v1/chat/completions", _CHAT % ("fake-model", ""), None, frozenset({401})),
    Kind("over-limit", 1, "/v1/chat/completions", _CHAT % ("fake-model", ""), "tight", frozenset({200, 429})),
    Kind("malformed", 1, "/v1/chat/completions", '{"model": "fake-model", "messages": [', "free",
         frozenset({200, 400})),
)


# ----------------------------------------------------------------- the driver (a process of its own)

def _request_templates(cfg: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str]]]:
    """(kind name, path, body, headers) of each slot of the rotation, with the client's key in place."""
    slots = []
    for kind in MIX:
        headers = {"Host": f"127.0.0.1:{cfg['port']}", "Content-Type": "application/json", **kind.headers}
        # An unknown key differs on every call, as a client guessing keys would send them.
        secret = "llmp-unknown-" + CALL_MARK if kind.key == "unknown" else cfg["secrets"].get(kind.key or "")
        if secret:
            headers["x-api-key" if kind.anthropic else "Authorization"] = (
                secret if kind.anthropic else f"Bearer {secret}")
        slots += [(kind.name, kind.path, kind.body, headers)] * kind.weight
    return slots


def _render(slot: tuple[str, str, str, dict[str, str]], n: int) -> bytes:
    _, path, body, headers = slot
    mark = str(n)
    data = body.replace(CALL_MARK, mark).encode()
    sep = "&" if "?" in path else "?"
    lines = [f"POST {path}{sep}soak={n} HTTP/1.1", *(f"{k}: {v.replace(CALL_MARK, mark)}" for k, v in headers.items()),
             f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


async def _drive(cfg: dict[str, Any]) -> dict[str, Any]:
    from bench.load import BadResponse, read_response

    slots = _request_templates(cfg)
    total, counter = cfg["calls"], iter(range(cfg["calls"]))
    statuses: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    answered = 0

    stop = asyncio.Event()  # SIGTERM: the soak ran out of time; finish the calls in flight and report
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def client() -> None:
        nonlocal answered
        reader = writer = None
        for n in counter:
            if stop.is_set():
                break
            slot = slots[n % len(slots)]
            for _attempt in range(2):  # a dropped keep-alive connection: one fresh try
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(cfg["host"], cfg["port"])
                    writer.write(_render(slot, n))
                    status, _, keep_alive = await read_response(reader)
                    break
                except (OSError, asyncio.IncompleteReadError, BadResponse, ValueError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    if writer is not None:
                        writer.close()
                    writer = None
            else:
                continue
            answered += 1
            by_status = statuses.setdefault(slot[0], {})
            by_status[str(status)] = by_status.get(str(status), 0) + 1
            if not keep_alive:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def progress() -> None:
        while True:
            print(f"PROGRESS {answered}", flush=True)
            await asyncio.sleep(0.5)

    started = time.monotonic()
    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(client() for _ in range(cfg["clients"])))
    ticker.cancel()
    return {"calls": total, "answered": answered, "seconds": time.monotonic() - started,
            "statuses": statuses, "errors": errors}


def _serve_upstream() -> None:
    """The fake upstream, forgetting what it records (300,000 requests would fill its memory)."""
    from tests.fakes.upstream import FakeUpstream

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    up = FakeUpstream(default_delay=0.0).start()
    print(f"fake upstream listening on {up.url}", flush=True)
    try:
        while True:
            time.sleep(1)
            up.clear()
    finally:
        up.stop()


# ----------------------------------------------------------------- the run

@dataclass
class Sample:
    seconds: float
    answered: int
    rss: int  # bytes


@dataclass
class SoakResult:
    calls: int
    answered: int
    seconds: float
    samples: list[Sample]
    statuses: dict[str, dict[str, int]]
    errors: dict[str, int]
    rows: int
    distinct_paths: int
    problems: list[str]  # row and status checks that failed
    memory: dict[str, Any]
    command: str
    cut: bool = False  # out of time: fewer calls than asked for

    @property
    def exit_status(self) -> int:
        if self.cut or self.errors or self.answered < self.calls:
            return 2
        return 1 if self.problems or self.memory["verdict"] == "GROWS" else 0


def rss_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_verdict(samples: list[Sample], calls: int) -> dict[str, Any]:
    """RSS at the start, at 1/3 and 2/3 of the calls and at the end; growth per third; verdict."""
    if len(samples) < 3:
        return {"verdict": "too short", "why": "fewer than 3 RSS samples"}

    def at(answered: float) -> int:
        nearest = sorted(samples, key=lambda s: abs(s.answered - answered))[:3]
        return int(statistics.median(s.rss for s in nearest))

    third = calls / 3
    start, one, two, end = at(0), at(third), at(2 * third), samples[-1].rss
    last_growth, middle_growth = end - two, two - one
    allowed = max(FLOOR_BYTES, BYTES_PER_CALL * third)
    if calls < MIN_CALLS_FOR_VERDICT:
        verdict = "too short"
    else:
        verdict = "LEVELS OFF" if last_growth <= allowed else "GROWS"
    return {"verdict": verdict, "rss_start": start, "rss_third": one, "rss_two_thirds": two, "rss_end": end,
            "middle_growth": middle_growth, "last_growth": last_growth, "allowed_last_growth": int(allowed),
            "middle_bytes_per_call": middle_growth / third, "last_bytes_per_call": last_growth / third}


class Soak:
    def __init__(self, calls: int, clients: int, db: str | None, sample_s: float = 2.0,
                 max_seconds: float | None = None) -> None:
        self.calls, self.clients, self.sample_s = calls, clients, sample_s
        self.max_seconds = max_seconds if max_seconds is not None else 120 + calls / 100
        self.tmp = Path(tempfile.mkdtemp(prefix="llm-proxy-soak-"))
        self.table = f"soak_{secrets.token_hex(5)}"
        self.db = db or f"sqlite:///{self.tmp / 'soak.db'}"
        self.services: list[Service] = []
        self.driver: subprocess.Popen[str] | None = None
        self.secrets: dict[str, str] = {}
        self.cut = False  # stopped at --max-seconds before every call was made

    # -- set-up and tear-down

    def _make_keys(self) -> Path:
        keys_file = self.tmp / "keys.toml"
        for name, limits in KEYS.items():
            done = subprocess.run([str(BIN / "llm-proxy"), "keys", "--keys-file", str(keys_file), "create", name,
                                   *limits], capture_output=True, text=True, timeout=60, cwd=REPO)
            if done.returncode != 0 or not done.stdout.strip().startswith("llmp-"):
                raise BenchError(f"llm-proxy keys create {name} failed: {done.stdout}{done.stderr}")
            self.secrets[name] = done.stdout.strip()
        return keys_file

    def start(self) -> Service:
        keys_file = self._make_keys()
        upstream = self._service("fake upstream", [PY, "-m", "bench.soak", "--serve-upstream"],
                                 re.compile(r"listening on (http://\S+)"))
        providers = self.tmp / "providers.toml"
        providers.write_text(PROVIDERS.format(url=upstream.group))
        cmd = [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", "127.0.0.1",
               "--mode", f"reverse:{upstream.group}@0", "--set", f"confdir={self.tmp / 'conf'}",
               "--set", "flow_detail=0", "--set", f"llm_providers={providers}", "--set", f"llm_keys={keys_file}",
               "--set", f"llm_db={self.db}", "--set", f"llm_table={self.table}"]
        env = {"LLM_PROXY_HOME": str(self.tmp / "home"), "OPENAI_API_KEY": "sk-soak-fake",
               "ANTHROPIC_API_KEY": "sk-ant-soak-fake"}
        return self._service("proxy", cmd, LISTENING, env)

    def _service(self, name: str, cmd: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None
                 ) -> Service:
        service = Service(name, cmd, ready, env)
        self.services.append(service)
        return service.start()

    def cleanup(self) -> None:
        stop_all([self.driver] if self.driver is not None else [], self.services, timeout=30)
        if self.db.startswith("postgresql"):
            drop_bench_table(self.db, self.table)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the measurement

    def run(self) -> SoakResult:
        command = shlex.join([Path(PY).name, "-m", "bench.soak", "--calls", str(self.calls),
                              "--clients", str(self.clients)] + (["--db", self.db] if "postgres" in self.db else []))
        proxy = self.start()
        cfg = {"host": "127.0.0.1", "port": int(proxy.group), "calls": self.calls, "clients": self.clients,
               "secrets": self.secrets}
        self.driver = subprocess.Popen([PY, "-m", "bench.soak", "--drive", json.dumps(cfg)], cwd=REPO, text=True,
                                       stdout=subprocess.PIPE, start_new_session=True)
        answered, result_line = [0], [""]

        def read() -> None:
            assert self.driver is not None and self.driver.stdout is not None
            for line in self.driver.stdout:
                if line.startswith("PROGRESS "):
                    answered[0] = int(line.split()[1])
                elif line.startswith("RESULT "):
                    result_line[0] = line[len("RESULT "):]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started = time.monotonic()
        samples: list[Sample] = []
        while True:
            rss = rss_of(proxy.pid)
            if rss is not None:
                samples.append(Sample(time.monotonic() - started, answered[0], rss))
            if self.driver.poll() is not None:
                break
            if time.monotonic() - started > self.max_seconds and not self.cut:
                self.cut = True  # the driver finishes its calls in flight and reports; the run counts as broken
                print(f"soak: out of time ({self.max_seconds:g} s) after {answered[0]:,} calls; stopping",
                      file=sys.stderr, flush=True)
                self.driver.send_signal(signal.SIGTERM)
            time.sleep(self.sample_s)
        reader.join(10)
        if not result_line[0]:
            raise BenchError(f"the load driver ended without a result (exit {self.driver.returncode})")
        driven = json.loads(result_line[0])
        samples.append(Sample(time.monotonic() - started, driven["answered"], rss_of(proxy.pid) or samples[-1].rss))
        if proxy.stop(timeout=60) != 0:
            raise BenchError(f"the proxy did not stop cleanly:\n{proxy.log[-4000:]}")
        rows, distinct = self.count_rows()
        problems = []
        if rows != driven["answered"] or distinct != rows:
            problems.append(f"{driven['answered']} calls answered but {rows} rows ({distinct} distinct calls)")
        for kind in MIX:
            got = driven["statuses"].get(kind.name, {})
            wrong = {status: n for status, n in got.items() if int(status) not in kind.expect}
            if wrong:
                problems.append(f"{kind.name}: unexpected statuses {wrong} (expected {sorted(kind.expect)})")
        tight = driven["statuses"].get("over-limit", {})
        if sum(tight.values()) > TIGHT_RPM and not tight.get("429"):
            problems.append("over-limit: no call was refused with 429")
        if tight.get("200", 0) > TIGHT_RPM * (1 + driven["seconds"] // 60):
            problems.append(f"over-limit: {tight['200']} calls admitted in {driven['seconds']:.0f} s "
                            f"at --rpm {TIGHT_RPM}")
        calls = driven["answered"] if self.cut else self.calls  # judge what was run
        return SoakResult(calls, driven["answered"], driven["seconds"], samples, driven["statuses"],
                          driven["errors"], rows, distinct, problems, memory_verdict(samples, calls), command, self.cut)

    def count_rows(self) -> tuple[int, int]:
        query = f"SELECT count(*), count(DISTINCT path) FROM {self.table}"
        if self.db.startswith("postgresql"):
            import psycopg

            with psycopg.connect(self.db, connect_timeout=10) as conn:
                count, distinct = conn.execute(query).fetchone()
        else:
            with sqlite3.connect(self.db.removeprefix("sqlite:///")) as conn:
                count, distinct = conn.execute(query).fetchone()
        return int(count), int(distinct)


def _mb(value: float) -> str:
    return f"{value / (1 << 20):.1f} MB"


def report(result: SoakResult) -> str:
    m = result.memory
    lines = [f"command: {result.command}", "",
             "| calls | answered | duration | calls/s | rows | RSS start | RSS at 1/3 | RSS at 2/3 | RSS end "
             "| middle third | last third | last third per call | verdict |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    if "rss_start" in m:
        lines.append(
            f"| {result.calls:,} | {result.answered:,} | {result.seconds:.0f} s | {result.answered / result.seconds:.0f} "
            f"| {result.rows:,} | {_mb(m['rss_start'])} | {_mb(m['rss_third'])} | {_mb(m['rss_two_thirds'])} "
            f"| {_mb(m['rss_end'])} | {m['middle_growth'] / 1024:+,.0f} KB | {m['last_growth'] / 1024:+,.0f} KB "
            f"| {m['last_bytes_per_call']:+.1f} B | {m['verdict']} |")
        lines.append(f"\nallowed growth in the last third: {_mb(m['allowed_last_growth'])} "
                     f"(max of 2 MB and {BYTES_PER_CALL} bytes per call); a verdict needs "
                     f">= {MIN_CALLS_FOR_VERDICT:,} calls")
    else:
        lines.append(f"| {result.calls:,} | {result.answered:,} | {result.seconds:.0f} s | | {result.rows:,} "
                     f"| | | | | | | | {m['verdict']} ({m.get('why', '')}) |")
    lines.append("\nstatuses by kind: " + "; ".join(
        f"{kind}: " + ", ".join(f"{s} x{n}" for s, n in sorted(by.items())) for kind, by in result.statuses.items()))
    lines.append(f"rows: {result.rows:,} for {result.answered:,} answered calls ({result.distinct_paths:,} distinct)")
    if result.errors:
        lines.append(f"client errors: {result.errors}")
    if result.cut:
        lines.append("BROKEN: out of time (--max-seconds) before every call was made; judged on the calls made")
    for problem in result.problems:
        lines.append(f"FAILED: {problem}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300_000, help="calls to drive (default 300,000)")
    parser.add_argument("--clients", type=int, default=8, help="keep-alive client connections (default 8)")
    parser.add_argument("--db", default=None, help="postgresql://... URL (default: an SQLite temp file)")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    parser.add_argument("--max-seconds", type=float, default=None, help="time limit (default 120 + calls/100)")
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # internal: the load driver process
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.calls < 1 or args.clients < 1 or args.sample <= 0:
        parser.error("--calls and --clients must be at least 1, --sample positive")
    if args.db is not None and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes a postgresql:// URL (the default is an SQLite temp file)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        _serve_upstream()
        return 0
    if args.drive:
        print("RESULT " + json.dumps(asyncio.run(_drive(json.loads(args.drive)))), flush=True)
        return 0
    soak = Soak(args.calls, args.clients, args.db, args.sample, args.max_seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    print(f"soak: {args.calls:,} calls, {args.clients} clients, database {soak.db}", flush=True)
    try:
        result = soak.run()
    except (BenchError, ServiceError) as e:
        print(f"soak broke: {e}", file=sys.stderr)
        return 2
    finally:
        soak.cleanup()
    print(report(result), flush=True)
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
