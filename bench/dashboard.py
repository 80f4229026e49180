"""Does a dashboard refreshing every second slow the proxy down? `python -m bench.dashboard`.

Issue 10 asks: "Nothing on the event loop waits for the database. Reports run
in a worker with its own connection. Measured: with the dashboard refreshing
every second during a bench.run, proxy throughput stays >= 0.95x of the same
run without it." This measures exactly that, in one run on one machine, and
reports the ratio.

Usage (from the repo root, PostgreSQL reachable, loopback traffic only)::

    .venv/bin/python -m bench.dashboard             # 4 rounds x 2 conditions x 10 s (about 3 minutes)
    .venv/bin/python -m bench.dashboard --history-rows 1000000 --rounds 6 --json dash.json
    .venv/bin/python -m bench.dashboard --history-rows 2000 --rounds 1 --duration 2   # smoke run, about 15 s

Options: ``--history-rows N`` rows of history in the table before the proxy
starts (default 200,000, spread over ``--history-days``, default 30),
``--rounds R`` (default 4), ``--duration S`` measured seconds per round and
condition (default 10; each load also has ``--warmup``, default 1 s, not
measured), ``--connections N`` (default 8, as bench.run's ``json`` load),
``--interval S`` between dashboard refreshes (default 1), ``--window``
``24h|7d|30d`` the dashboard shows (default 30d, the widest of the page's
presets, so each refresh reads the most), ``--resolution auto|day|hour`` of
its chart (default auto: as the page, hour for 24h, else day), ``--pg URL``
(default ``$LLM_PROXY_TEST_PG`` or
``postgresql://postgres@127.0.0.1:5432/test``), ``--json PATH`` (every
number), ``--max-seconds T`` (the whole run is cut there and counts as broken;
default from the sizes). Exit status: 0 the run gave its figures (the ratio is
a figure, not a test: it is not judged in the status), 1 some request failed
(the load's or the dashboard's: the figures are suspect), 2 the run broke.

What one run does:

1. Makes a temp dir with a keys file holding a virtual key made by the real
   CLI (``llm-proxy keys --keys-file F create bench``), a providers file that
   points "openai" at the fake upstream, a random admin key, and picks a fresh
   table ``bench_dash_<random>``.
2. Creates that table with its rollups (``ensure_rollup``, as
   ``bench.reports`` does: the rollup's triggers then keep it as rows arrive)
   and fills it with ``--history-rows`` realistic rows (``bench.reports``'
   generator: hundreds of keys and models with skewed use, 4% errors, 3%
   unpriced), their times spread over the last ``--history-days``; then
   ``VACUUM ANALYZE``.
3. Starts the fake upstream (``python -m tests.fakes.upstream --port 0
   --delay 0.001``) and one ``mitmdump -s addon/llm_proxy.py`` in reverse
   mode to it (``--listen-host 127.0.0.1``, port 0, ``llm_db`` on
   PostgreSQL and that table, ``llm_keys``, ``--set llm_admin_key=...``), and
   makes one dashboard refresh from this process: every answer must be a 200.
4. Measures ``--rounds`` rounds; each measures both conditions back to back,
   in an order that alternates round by round (plain first in odd rounds,
   dashboard first in even ones), so drift and noise that come and go hit
   both alike:

   - ``plain``: the load alone;
   - ``dashboard``: the same load while a dashboard poller (a process of its
     own, httpx, up to 6 connections like a browser) refreshes every
     ``--interval`` seconds with the admin key as Bearer.

   The load is bench.run's ``json`` load with the project's load generator
   (``bench/load.py``, its own process: non-streamed ``POST
   /v1/chat/completions``, ``--connections`` keep-alive connections, closed
   loop, requests/s over the measured window). One refresh is what
   ``llm_proxy/control/static/app.js`` does on one refresh of the page: in
   parallel ``GET /_llm/api/usage?since=W&group_by=day`` (the chart and the
   totals; ``hour`` for 24h), ``...&group_by=key``, ``...&group_by=model``,
   ``...&group_by=provider`` and ``GET /_llm/api/requests?since=W&limit=50``,
   then ``GET /_llm/api/keys``. As on the page, a refresh still running at the
   next tick makes that tick a no-op (counted as skipped), so a slow proxy is
   not flooded.
5. Prints every round (requests/s of each condition, and their ratio), the
   median requests/s per condition and the ratio of the medians, dashboard /
   plain, against the goal of >= 95%; the load's latency and the CPU of the
   proxy (all threads, and its event-loop thread alone), of the poller and of
   the rest of the machine (PostgreSQL, which runs the reports' queries,
   included) per condition; and the dashboard's latencies by request (p50,
   p95, max) and per whole refresh. With ``--json``, writes it all.
6. Cleans up in any case (the processes it started, by pid; the table, its
   ``_hourly``/``_daily`` rollups and their functions; the temp dir), also on
   Ctrl-C, SIGTERM or when ``--max-seconds`` runs out.

The live calls add rows to the table as the run goes (about 700 a second on a
2-core machine): they fall in the current hour and day, which the usage reports
read from the rollups (the current hour minus the rows after `until`, normally
none); the sums of closed days are kept by the control plane between refreshes. That is what a dashboard on a busy proxy sees; the
interleaved rounds spread it over both conditions' neighbours alike.

On a machine with few cores the reports' queries run in PostgreSQL on the same
cores as the proxy: the "rest" CPU column shows what they take. A ratio under
95% with the proxy's event-loop CPU per request unchanged points there, not at
the event loop waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.load import percentile
from bench.report import fmt, machine
from bench.services import ADDON, BIN, DEFAULT_PG, PY, REPO, BenchError, drop_bench_table, stop_all, system_cpu
from bench.writer import MODEL
from tests.fakes.process import LISTENING, Service, ServiceError

FAKE_OPENAI_KEY = "sk-bench-not-a-real-key"
KEY_NAME = "bench"
CONDITIONS = {"plain": "the load alone", "dashboard": "the load, and the dashboard refreshing"}
GOAL = 0.95  # issue 10: throughput with the dashboard >= 0.95 x without it
BROWSER_CONNECTIONS = 6  # a browser's HTTP/1.1 connections per host
CPU_SHOWN = ("proxy", "upstream", "loadgen", "poller", "rest", "steal")
POLLER_STOP_TIMEOUT = 90.0  # a refresh in progress when the load ends may take this long to finish


# ----------------------------------------------------------------- what one refresh asks

def refresh_requests(window: str, resolution: str = "auto") -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """The requests of one refresh of the dashboard page (app.js `load()`), with the window preset
    `window`: those it makes in parallel, then the keys it asks for once they have answered."""
    unit = resolution if resolution != "auto" else "hour" if window == "24h" else "day"

    def usage(group_by: str) -> str:
        return "/_llm/api/usage?" + urlencode({"since": window, "group_by": group_by})

    parallel = [
        (f"usage group_by={unit}", usage(unit)),  # the chart, and the totals
        ("usage group_by=key", usage("key")),
        ("usage group_by=model", usage("model")),
        ("usage group_by=provider", usage("provider")),
        ("requests limit=50", "/_llm/api/requests?" + urlencode({"since": window, "limit": 50})),
    ]
    return parallel, ("keys", "/_llm/api/keys")


# ----------------------------------------------------------------- the history

def history(count: int, days: float, seed: int = 10) -> Iterator[Any]:
    """bench.reports' realistic rows (over 90 days), their ages scaled to `days`."""
    from bench.reports import realistic_records

    now = datetime.now(UTC)
    scale = days / 90
    for record in realistic_records(count, seed):
        record.ts = now - (now - record.ts) * scale
        yield record


def fill_history(pg_url: str, table: str, rows: int, days: float, batch: int = 5000) -> dict[str, Any]:
    """The table with its rollups first (its triggers then keep the rollup), then the rows."""
    import psycopg

    from llm_proxy.control.reports import ensure_rollup
    from bench.reports import write_records
    from llm_proxy.storage.postgres import PostgresSink

    started = time.monotonic()
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        if not ensure_rollup(conn, table):
            print("  (PostgreSQL older than 15: no hourly rollup, the reports read the rows)")
    write_records(PostgresSink(pg_url, table), history(rows, days), batch)
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"VACUUM ANALYZE {table}")
        hourly = None
        if conn.execute("SELECT to_regclass(%s)", (f"{table}_hourly",)).fetchone()[0] is not None:
            conn.execute(f"VACUUM ANALYZE {table}_hourly")
            conn.execute(f"VACUUM ANALYZE {table}_daily")
            hourly = conn.execute(f"SELECT count(*) FROM {table}_hourly").fetchone()[0]
    return {"rows": rows, "days": days, "seconds": time.monotonic() - started, "rollup_rows": hourly}


# ----------------------------------------------------------------- the poller (a process of its own)

async def poll(cfg: dict[str, Any]) -> dict[str, Any]:
    """Refresh like the page until a line (or EOF) arrives on stdin; every answer timed."""
    import httpx

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.run_in_executor(None, sys.stdin.readline).add_done_callback(lambda _: loop.call_soon_threadsafe(stop.set))
    parallel, last = refresh_requests(cfg["window"], cfg["resolution"])
    latency: dict[str, list[float]] = {name: [] for name, _ in [*parallel, last]}
    statuses: dict[str, Counter[str]] = {name: Counter() for name in latency}
    refresh_ms: list[float] = []

    async def timed(client: httpx.AsyncClient, name: str, path: str) -> None:
        started = time.perf_counter()
        try:
            answer = await client.get(path)
            answer.json()  # the whole body, as the page reads it
            status = str(answer.status_code)
        except (httpx.HTTPError, ValueError) as e:
            status = type(e).__name__
        latency[name].append(1000 * (time.perf_counter() - started))
        statuses[name][status] += 1

    limits = httpx.Limits(max_connections=BROWSER_CONNECTIONS, max_keepalive_connections=BROWSER_CONNECTIONS)
    headers = {"authorization": f"Bearer {cfg['admin_key']}", "accept": "application/json"}
    async with httpx.AsyncClient(base_url=cfg["base_url"], headers=headers, limits=limits,
                                 timeout=cfg.get("timeout", 60.0)) as client:
        print("READY", flush=True)
        interval = cfg["interval"]
        start = time.perf_counter()
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.gather(*(timed(client, name, path) for name, path in parallel))
            await timed(client, *last)
            refresh_ms.append(1000 * (time.perf_counter() - began))
            # app.js: setInterval ticks; a tick while a refresh runs does nothing.
            next_tick = start + interval * (math.floor((time.perf_counter() - start) / interval) + 1)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.perf_counter()))
            except TimeoutError:
                pass
        elapsed = time.perf_counter() - start
    return {"refreshes": len(refresh_ms), "ticks": math.floor(elapsed / interval) + 1,
            "elapsed_s": elapsed, "refresh_ms": refresh_ms, "latency_ms": latency,
            "statuses": {name: dict(c) for name, c in statuses.items()}}


def poller_main(config: str) -> None:
    result = asyncio.run(poll(json.loads(config)))
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------- the run

class TimeUp(BenchError):
    """--max-seconds ran out."""


class DashboardBench:
    def __init__(self, args: argparse.Namespace, command: str = "") -> None:
        self.args = args
        self.pg_url: str = args.pg
        self.table = f"bench_dash_{secrets.token_hex(5)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-dash-"))
        self.admin_key = secrets.token_urlsafe(24)
        self.services: list[Service] = []
        self.children: list[subprocess.Popen[str]] = []
        self.upstream: Service | None = None
        self.proxy: Service | None = None
        self.secret = ""
        self.table_made = False
        self.slices: list[dict[str, Any]] = []  # one per round and condition, in the order measured
        self.results: dict[str, Any] = {"command": command, "machine": machine(), "config": {
            "history_rows": args.history_rows, "history_days": args.history_days, "rounds": args.rounds,
            "duration": args.duration, "warmup": args.warmup, "connections": args.connections,
            "interval": args.interval, "window": args.window, "resolution": args.resolution, "table": self.table}}

    # -- set-up and tear-down

    def prepare(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.pg_url, connect_timeout=5) as conn:
                self.results["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        except psycopg.OperationalError as e:
            raise BenchError(f"PostgreSQL is needed at {self.pg_url}: {e}") from e
        self.keys_file = self.tmp / "keys.toml"
        done = subprocess.run(
            [str(BIN / "llm-proxy"), "keys", "--keys-file", str(self.keys_file), "create", KEY_NAME],
            check=False, capture_output=True, text=True, timeout=30, cwd=REPO)
        if done.returncode != 0 or not done.stdout.strip().startswith("llmp-"):
            raise BenchError(f"llm-proxy keys create {KEY_NAME} failed: {done.stdout}{done.stderr}")
        self.secret = done.stdout.strip()

    def fill(self) -> None:
        print(f"filling {self.table} with {self.args.history_rows:,} rows over {self.args.history_days:g} days ...",
              flush=True)
        self.table_made = True  # from here on, cleanup drops it
        filled = fill_history(self.pg_url, self.table, self.args.history_rows, self.args.history_days)
        self.results["history"] = filled
        print(f"  filled in {filled['seconds']:.1f} s; rollup rows: {fmt(filled['rollup_rows'], 0)}", flush=True)

    def start(self) -> None:
        print("starting the fake upstream and mitmdump with the addon ...", flush=True)
        self.upstream = self._service(
            "fake upstream", [PY, "-m", "tests.fakes.upstream", "--port", "0", "--delay", "0.001"],
            re.compile(r"listening on (http://\S+)"))
        upstream_url = self.upstream.group
        providers = self.tmp / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "{upstream_url}"\nformat = "openai"\n'
                             'api_key_env = "OPENAI_API_KEY"\n')
        cmd = [str(BIN / "mitmdump"), "-s", str(ADDON), "--listen-host", "127.0.0.1",
               "--set", f"confdir={self.tmp / 'conf'}", "--set", "flow_detail=0",
               "--mode", f"reverse:{upstream_url}@0", "--set", f"llm_providers={providers}",
               "--set", f"llm_db={self.pg_url}", "--set", f"llm_table={self.table}",
               "--set", f"llm_keys={self.keys_file}", "--set", f"llm_admin_key={self.admin_key}"]
        env = {"LLM_PROXY_HOME": str(self.tmp / "home"), "OPENAI_API_KEY": FAKE_OPENAI_KEY}
        self.proxy = self._service("mitmdump (addon)", cmd, LISTENING, env)
        self.proxy.wait_for_log("llm-proxy writing rows to")

    def _service(self, name: str, cmd: list[str], ready: Any, env: dict[str, str] | None = None) -> Service:
        service = Service(name, cmd, ready, env)
        self.services.append(service)
        return service.start()

    def cleanup(self) -> None:
        stop_all(self.children, self.services)
        if self.table_made:
            drop_bench_table(self.pg_url, self.table)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the dashboard

    @property
    def base_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.group}"

    def prime(self) -> dict[str, Any]:
        """One refresh from here: the admin key works, every report answers, the workers are connected."""
        import httpx

        parallel, last = refresh_requests(self.args.window, self.args.resolution)
        timings = {}
        with httpx.Client(base_url=self.base_url, timeout=120,
                          headers={"authorization": f"Bearer {self.admin_key}"}) as client:
            for name, path in [*parallel, last]:
                started = time.perf_counter()
                answer = client.get(path)
                timings[name] = 1000 * (time.perf_counter() - started)
                if answer.status_code != 200:
                    raise BenchError(f"the dashboard's {path} answered {answer.status_code}: {answer.text[:500]}")
        print("  first refresh (cold, one request at a time): "
              + ", ".join(f"{name} {ms:.0f} ms" for name, ms in timings.items()), flush=True)
        return timings

    def start_poller(self) -> subprocess.Popen[str]:
        config = {"base_url": self.base_url, "admin_key": self.admin_key, "interval": self.args.interval,
                  "window": self.args.window, "resolution": self.args.resolution}
        proc = subprocess.Popen([PY, "-m", "bench.dashboard", "--poller", json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                start_new_session=True)
        self.children.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            proc.wait(10)
            raise BenchError(f"the dashboard poller did not start (exit {proc.returncode})")
        return proc

    def stop_poller(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        try:
            out, _ = proc.communicate("stop\n", timeout=POLLER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"the dashboard poller did not stop within {POLLER_STOP_TIMEOUT:g} s") from None
        finally:
            if proc in self.children and proc.poll() is not None:
                self.children.remove(proc)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise BenchError(f"the dashboard poller gave no result (exit {proc.returncode})")

    # -- the load

    def load_config(self) -> dict[str, Any]:
        """bench.run's `json` load: the same body, headers, scenario and closed loop."""
        assert self.proxy is not None
        messages = [{"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": "Say hello in one short sentence."}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 32}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.secret}",
                   "x-fake-scenario": json.dumps({"input": 27, "output": 9}, separators=(",", ":"))}
        return {"host": "127.0.0.1", "port": int(self.proxy.group), "path": "/v1/chat/completions",
                "warmup": self.args.warmup, "duration": self.args.duration, "body": json.dumps(body),
                "headers": headers, "connections": self.args.connections}

    def measure(self, round_no: int, condition: str) -> dict[str, Any]:
        assert self.proxy is not None and self.proxy.proc is not None and self.upstream is not None
        for service in (self.proxy, self.upstream):
            assert service.proc is not None
            if service.proc.poll() is not None:
                raise BenchError(f"{service.name} exited ({service.proc.returncode}):\n"
                                 + "".join(list(service.lines)[-40:]))
        print(f"  round {round_no} {condition:<9} {self.args.connections} conn, {self.args.duration:g} s ...",
              end="", flush=True)
        poller = self.start_poller() if condition == "dashboard" else None
        proc = subprocess.Popen([PY, "-m", "bench.load", json.dumps(self.load_config())], stdout=subprocess.PIPE,
                                text=True, cwd=REPO, start_new_session=True)
        self.children.append(proc)
        cpu0: dict[str, float | None] = {}
        cpu1: dict[str, float | None] = {}
        t0 = t1 = 0.0
        sys0 = sys1 = None
        result: dict[str, Any] | None = None

        def sample() -> dict[str, float | None]:
            assert self.proxy is not None and self.upstream is not None
            cpu = {"proxy": self.proxy.cpu_seconds(), "proxy_loop": self.proxy.cpu_seconds(main_thread=True),
                   "upstream": self.upstream.cpu_seconds()}
            if poller is not None:
                cpu["poller"] = process_cpu_seconds(poller.pid)
            return cpu

        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "MEASURE_START":
                t0, cpu0, sys0 = time.perf_counter(), sample(), system_cpu()
            elif line == "MEASURE_END":
                t1, cpu1, sys1 = time.perf_counter(), sample(), system_cpu()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        proc.wait()
        self.children.remove(proc)
        dashboard = self.stop_poller(poller) if poller is not None else None
        if result is None:
            raise BenchError(f"the load generator failed in round {round_no}, {condition} (exit {proc.returncode})")
        elapsed = t1 - t0
        cpu_s: dict[str, float | None] = {
            name: cpu1[name] - cpu0[name] if cpu0.get(name) is not None and cpu1.get(name) is not None else None
            for name in cpu0}  # type: ignore[operator]
        cpu_s["loadgen"] = result["loadgen_cpu_pct"] * elapsed / 100 if result["loadgen_cpu_pct"] else None
        if sys0 is not None and sys1 is not None:
            ours = sum(v for k, v in cpu_s.items() if v is not None and k != "proxy_loop")
            cpu_s["rest"] = max(0.0, sys1[0] - sys0[0] - ours)  # PostgreSQL (the reports' queries) included
            cpu_s["steal"] = sys1[1] - sys0[1]
        entry = {"round": round_no, "condition": condition, "rps": result["rps"], "requests": result["requests"],
                 "duration_s": result["duration_s"], "window_s": elapsed, "errors": result["errors"],
                 "error_kinds": result["error_kinds"], "latency_us": result["latency_us"],
                 "latency_ms": result["latency_ms"], "cpu_s": cpu_s, "dashboard": dashboard}
        line = f" {result['rps']:.0f} req/s, p50 {fmt(result['latency_ms']['p50'], 2)} ms, errors {result['errors']}"
        if dashboard is not None:
            failed = sum(n for s in dashboard["statuses"].values() for code, n in s.items() if code != "200")
            line += (f"; dashboard: {dashboard['refreshes']} refreshes, refresh p50 "
                     f"{fmt(percentile(sorted(dashboard['refresh_ms']), 50), 0)} ms, non-200 answers {failed}")
        print(line, flush=True)
        return entry

    # -- everything

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.prepare()
        self.fill()
        self.start()
        self.results["first_refresh_ms"] = self.prime()
        for r in range(1, self.args.rounds + 1):
            order = list(CONDITIONS) if r % 2 else list(reversed(CONDITIONS))
            for condition in order:
                self.slices.append(self.measure(r, condition))
        self.results["rows_after"] = self.count_rows()
        self.results["wall_s"] = time.perf_counter() - started
        self.results.update(summarize(self.slices))
        self.results["slices"] = [{k: v for k, v in s.items() if k != "latency_us"} for s in self.slices]
        return self.results

    def count_rows(self) -> int:
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None once it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- figures

def summarize(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """Per condition: requests/s by round and their median, latency and CPU; the ratio; the dashboard's latencies."""
    conditions: dict[str, Any] = {}
    for condition in CONDITIONS:
        mine = [s for s in slices if s["condition"] == condition]
        requests = sum(s["requests"] for s in mine)
        window = sum(s["window_s"] for s in mine)
        latencies = sorted(us / 1000 for s in mine for us in s["latency_us"])
        cpu_pct: dict[str, float | None] = {}
        cpu_ms: dict[str, float | None] = {}
        for name in ("proxy", "proxy_loop", "upstream", "loadgen", "poller", "rest", "steal"):
            values = [s["cpu_s"].get(name) for s in mine]
            complete = bool(values) and all(v is not None for v in values)
            cpu_pct[name] = 100 * sum(values) / window if complete and window > 0 else None  # type: ignore[arg-type]
            cpu_ms[name] = 1000 * sum(values) / requests if complete and requests else None  # type: ignore[arg-type]
        conditions[condition] = {
            "rps_rounds": [s["rps"] for s in mine],
            "rps_median": statistics.median(s["rps"] for s in mine) if mine else None,
            "requests": requests,
            "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
            "errors": sum(s["errors"] for s in mine),
            "cpu_pct": cpu_pct, "cpu_ms_per_request": cpu_ms,
        }
    plain, dash = conditions["plain"]["rps_median"], conditions["dashboard"]["rps_median"]
    by_round = []
    for r in sorted({s["round"] for s in slices}):
        rps = {s["condition"]: s["rps"] for s in slices if s["round"] == r}
        if rps.get("plain") and "dashboard" in rps:
            by_round.append(rps["dashboard"] / rps["plain"])
    ratio = dash / plain if plain and dash is not None else None
    return {"conditions": conditions, "ratio": ratio, "ratio_by_round": by_round,
            "goal": GOAL, "met": None if ratio is None else ratio >= GOAL,
            "dashboard": dashboard_latencies([s["dashboard"] for s in slices if s["dashboard"] is not None])}


def dashboard_latencies(polls: list[dict[str, Any]]) -> dict[str, Any]:
    """The poller's answers over every dashboard round: latency by request and per whole refresh."""
    def stats(values: list[float]) -> dict[str, float | None]:
        ordered = sorted(values)
        return {"n": len(ordered), "p50": percentile(ordered, 50), "p95": percentile(ordered, 95),
                "max": ordered[-1] if ordered else None}

    names = list(polls[0]["latency_ms"]) if polls else []
    statuses: dict[str, Counter[str]] = {name: Counter() for name in names}
    for p in polls:
        for name, counts in p["statuses"].items():
            statuses[name].update(counts)
    return {
        "requests": {name: {**stats([v for p in polls for v in p["latency_ms"][name]]),
                            "statuses": dict(statuses[name])} for name in names},
        "refresh": stats([v for p in polls for v in p["refresh_ms"]]),
        "refreshes": sum(p["refreshes"] for p in polls),
        "ticks": sum(p["ticks"] for p in polls),
        "non_200": sum(n for c in statuses.values() for code, n in c.items() if code != "200"),
    }


def report(results: dict[str, Any]) -> str:
    cfg, conds, d, m = results["config"], results["conditions"], results["dashboard"], results["machine"]
    rounds = f"{cfg['rounds']} round{'s' * (cfg['rounds'] != 1)}"
    verdict = "-" if results["met"] is None else "met" if results["met"] else "missed"
    lines = [
        f"### Proxy throughput, with and without the dashboard refreshing every {cfg['interval']:g} s",
        "",
        (f"mitmdump + llm-proxy (PostgreSQL writer, keys), {cfg['connections']} keep-alive connections, closed "
        f"loop, non-streamed chat completions; {rounds} of {cfg['duration']:g} s per condition; the table held "
        f"{cfg['history_rows']:,} rows over {cfg['history_days']:g} days; the dashboard shows the last "
        f"{cfg['window']}."),
        "",
        "| round | order | plain req/s | dashboard req/s | dashboard / plain |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, r in enumerate(sorted({s["round"] for s in results["slices"]})):
        mine = [s for s in results["slices"] if s["round"] == r]
        rps = {s["condition"]: s["rps"] for s in mine}
        ratio = results["ratio_by_round"][i] if i < len(results["ratio_by_round"]) else None
        lines.append(f"| {r} | {mine[0]['condition']} first | {fmt(rps.get('plain'), 0)} "
                     f"| {fmt(rps.get('dashboard'), 0)} | {pct(ratio)} |")
    lines += [
        (f"| median | | {fmt(conds['plain']['rps_median'], 0)} | {fmt(conds['dashboard']['rps_median'], 0)} "
        f"| **{pct(results['ratio'])}** |"),
        "",
        (f"Goal (issue 10): dashboard / plain >= {GOAL:.0%} (ratio of the medians): "
        f"**{pct(results['ratio'])}, {verdict}**."),
        "",
        ("| condition | load p50 ms | p99 ms | errors | proxy CPU ms/req (event loop) "
        "| CPU % proxy / upstream / loadgen / poller / rest / stolen |"),
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, c in conds.items():
        cpu = " / ".join(fmt(c["cpu_pct"].get(k), 0) for k in CPU_SHOWN)
        per_request = c["cpu_ms_per_request"]
        lines.append(f"| {name} | {fmt(c['latency_ms']['p50'], 2)} | {fmt(c['latency_ms']['p99'], 2)} "
                     f"| {c['errors']} | {fmt(per_request['proxy'], 2)} ({fmt(per_request['proxy_loop'], 2)}) "
                     f"| {cpu} |")
    lines += [
        "",
        (f"### The dashboard's answers under load ({d['refreshes']} refreshes for {d['ticks']} ticks; a tick "
        "during a refresh is skipped, as on the page)"),
        "",
        "| request | n | p50 ms | p95 ms | max ms | not 200 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in d["requests"].items():
        bad = sum(n for code, n in s["statuses"].items() if code != "200")
        lines.append(f"| {name} | {s['n']} | {fmt(s['p50'], 1)} | {fmt(s['p95'], 1)} | {fmt(s['max'], 1)} | {bad} |")
    r = d["refresh"]
    lines += [
        (f"| whole refresh (5 in parallel, then keys) | {r['n']} | {fmt(r['p50'], 1)} | {fmt(r['p95'], 1)} "
        f"| {fmt(r['max'], 1)} | |"),
        "",
        f"Rows in the table at the end: {results.get('rows_after', 0):,}. Wall time {results.get('wall_s', 0):.0f} s.",
        (f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, mitmproxy {m['mitmproxy']}, "
        f"PostgreSQL {results.get('postgres', '?')}."),
        "",
        f"Command: `{results['command']}`",
    ]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# ----------------------------------------------------------------- entry point

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _time_up(signum: int, frame: Any) -> None:
    raise TimeUp("--max-seconds ran out")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--history-rows", type=int, default=200_000, help="rows in the table before the proxy starts")
    parser.add_argument("--history-days", type=float, default=30, help="days those rows are spread over")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each measuring both conditions")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per round and condition")
    parser.add_argument("--warmup", type=float, default=1, help="unmeasured seconds of load before each window")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load")
    parser.add_argument("--interval", type=float, default=1, help="seconds between dashboard refreshes")
    parser.add_argument("--window", choices=("24h", "7d", "30d"), default="30d", help="the dashboard's window")
    parser.add_argument("--resolution", choices=("auto", "day", "hour"), default="auto",
                        help="its chart's buckets (auto: hour for 24h, else day)")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL (a table bench_dash_<random> is used)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--max-seconds", type=int, default=None,
                        help="cut the run there (default: 120 + history rows / 500 + 2.5 x the measured time)")
    parser.add_argument("--poller", metavar="CONFIG", help=argparse.SUPPRESS)  # the dashboard poller's process
    args = parser.parse_args(argv)
    if args.poller is None:
        if min(args.rounds, args.duration, args.connections, args.interval) <= 0 or min(
                args.history_rows, args.warmup) < 0 or args.history_days <= 0:
            parser.error("--rounds, --duration, --connections, --interval and --history-days must be positive, "
                         "--history-rows and --warmup not negative")
        if args.max_seconds is None:
            measured = args.rounds * 2 * (args.duration + args.warmup)
            args.max_seconds = round(120 + args.history_rows / 500 + 2.5 * measured)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.poller is not None:
        poller_main(args.poller)
        return 0
    # Ctrl-C, SIGTERM and the time limit all end in the cleanup, even when started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGALRM, _time_up)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join([PY, "-m", "bench.dashboard", *argv])
    bench = DashboardBench(args, command)
    print(f"llm-proxy dashboard benchmark: {command}", flush=True)
    status = 0
    signal.alarm(args.max_seconds)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        status = 130
    except ServiceError as e:  # BenchError, TimeUp, or a service that would not start
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        status = 2
    except Exception:  # a bug or the database going away: the run broke, and says where
        traceback.print_exc()
        status = 2
    finally:
        signal.alarm(0)
        bench.cleanup()
    if status:
        return status
    results = bench.results
    print()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    failed = sum(c["errors"] for c in results["conditions"].values()) + results["dashboard"]["non_200"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
