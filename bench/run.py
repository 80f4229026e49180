"""Benchmark entry point: `python -m bench.run`. How it works: see the `bench` package docstring."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.report import PROXIES, TARGETS, checks, fmt, machine, pool, report, summarize_profile
from bench.services import ADDON, BIN, DEFAULT_PG, PY, REPO, BenchError, drop_bench_table, stop_all, system_cpu
from bench.workloads import STREAM_CHUNKS, WORKLOADS, parse_workloads, scenario, small_body
from bench.writer import bench_writer
from tests.fakes.process import LISTENING, Service, ServiceError

MODEL = "gpt-4o-mini"
FAKE_OPENAI_KEY = "sk-bench-not-a-real-key"
KEY_NAMES = {"addon": "bench", "outage": "bench-outage"}
LOADS = ("json", "single", "stream", "sse300", "agent")
# The loads of each workload (bench/workloads.py): `small` is the original three.
WORKLOAD_LOADS = {"small": ("json", "single", "stream"), "stream": ("sse300",), "agent": ("agent",)}
STREAM_LOADS = ("stream", "sse300")  # bare mitmdump passes chunks on for these (stream_large_bodies=1)
LITELLM_LOADS = ("json", "sse300", "agent")

# ----------------------------------------------------------------- the run

class Endpoint:
    """Where a target's load goes, and the processes whose CPU is its cost."""

    def __init__(self, host: str, port: int, proxy: Service | None, stream_proxy: Service | None = None) -> None:
        self.host, self.port, self.proxy = host, port, proxy
        self.stream_proxy = stream_proxy or proxy


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.slice_s: float = args.duration / args.rounds
        self.pg_url: str = args.pg
        self.table = f"bench_{secrets.token_hex(5)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-"))
        self.services: list[Service] = []
        self.children: list[subprocess.Popen[str]] = []
        self.secrets: dict[str, str] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.upstream: Service | None = None
        self.relay: Service | None = None
        self.slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.results: dict[str, Any] = {"targets": {}}
        self.profile_dir: Path | None = None
        self.pg_reached = False
        self.loads = [load for w in args.workload for load in WORKLOAD_LOADS[w]]

    def targets_for(self, load: str) -> list[str]:
        """Who is measured under a load: the outage proxy only under the small ones, LiteLLM when given."""
        names = [t for t in TARGETS if t != "litellm" and (t != "outage" or load in WORKLOAD_LOADS["small"])]
        if "litellm" in self.endpoints and load in LITELLM_LOADS:
            names.append("litellm")
        return names

    # -- set-up and tear-down

    def prepare(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.pg_url, connect_timeout=5) as conn:
                self.results["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            self.pg_reached = True
        except psycopg.OperationalError as e:
            raise BenchError(f"PostgreSQL is needed at {self.pg_url}: {e}") from e
        self.keys_file = self.tmp / "keys.toml"
        for target, name in KEY_NAMES.items():
            done = subprocess.run(
                [str(BIN / "llm-proxy"), "keys", "--keys-file", str(self.keys_file), "create", name],
                capture_output=True, text=True, timeout=30, cwd=REPO)
            if done.returncode != 0 or not done.stdout.strip().startswith("llmp-"):
                raise BenchError(f"llm-proxy keys create {name} failed: {done.stdout}{done.stderr}")
            self.secrets[target] = done.stdout.strip()

    def start_all(self) -> None:
        print("starting the fake upstream, the database relay and four mitmdumps ...", flush=True)
        self.upstream = self._service(
            "fake upstream", [PY, "-m", "tests.fakes.upstream", "--port", "0", "--delay", "0.001"],
            re.compile(r"listening on (http://\S+)"))
        upstream_url = self.upstream.group
        parts = urlsplit(upstream_url)
        self.endpoints["direct"] = Endpoint(parts.hostname or "127.0.0.1", parts.port or 80, None)
        bare = self.start_mitmdump("bare", upstream_url, db_url=None)
        bare_stream = self.start_mitmdump("bare-stream", upstream_url, db_url=None,
                                          extra=["--set", "stream_large_bodies=1"])
        self.endpoints["bare"] = Endpoint("127.0.0.1", int(bare.group), bare, bare_stream)
        addon = self.start_mitmdump("addon", upstream_url, db_url=self.pg_url)
        self.endpoints["addon"] = Endpoint("127.0.0.1", int(addon.group), addon)
        pg = urlsplit(self.pg_url)
        self.relay = self._service(
            "tcp relay", [PY, "-m", "tests.fakes.tcprelay", "--target",
                          f"{pg.hostname or '127.0.0.1'}:{pg.port or 5432}", "--port", "0"],
            re.compile(r"relay 127\.0\.0\.1:(\d+)"))
        userinfo = pg.netloc.rpartition("@")[0]
        relayed = pg._replace(netloc=f"{userinfo + '@' if userinfo else ''}127.0.0.1:{self.relay.group}").geturl()
        outage = self.start_mitmdump("outage", upstream_url, db_url=relayed)
        self.endpoints["outage"] = Endpoint("127.0.0.1", int(outage.group), outage)
        self.relay.signal(signal.SIGUSR1)  # the outage starts: connections dropped, new ones refused
        if self.args.litellm:
            self.endpoints["litellm"] = self.start_litellm(upstream_url)
        time.sleep(0.3)

    def start_litellm(self, upstream_url: str) -> Endpoint:
        """LiteLLM's proxy (`litellm --config`), its one model on the fake upstream, no database."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # LiteLLM passes no client header on: each load's fake scenario rides on a model of its own.
        lines = ["model_list:"]
        for load in LITELLM_LOADS:
            header = json.dumps({"x-fake-scenario": json.dumps(self.fake_scenario(load), separators=(",", ":"))})
            lines += [f"  - model_name: bench-{load}", "    litellm_params:", f"      model: openai/{MODEL}",
                      f"      api_base: {upstream_url}/v1", f"      api_key: {FAKE_OPENAI_KEY}",
                      f"      extra_headers: {header}"]
        config = self.tmp / "litellm.yaml"
        config.write_text("\n".join(lines) + "\n")
        proxy = self._service(
            "litellm", [self.args.litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                        "--num_workers", "1"],
            re.compile(r"(Uvicorn running on|Application startup complete)"),
            {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"})
        return Endpoint("127.0.0.1", port, proxy)

    def cleanup(self) -> None:
        stop_all(self.children, self.services)
        if self.pg_reached:
            drop_bench_table(self.pg_url, self.table)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _service(self, name: str, cmd: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None
                 ) -> Service:
        service = Service(name, cmd, ready, env)
        self.services.append(service)
        return service.start()

    def start_mitmdump(self, name: str, upstream_url: str, *, db_url: str | None, extra: list[str] | None = None
                       ) -> Service:
        cmd = [str(BIN / "mitmdump")]
        env = {"LLM_PROXY_HOME": str(self.tmp / f"home-{name}")}  # one journal per proxy
        if db_url is not None:
            cmd += ["-s", str(ADDON)]
            env["OPENAI_API_KEY"] = FAKE_OPENAI_KEY
        cmd += ["--listen-host", "127.0.0.1", "--set", f"confdir={self.tmp / f'conf-{name}'}",
                "--set", "flow_detail=0", "--mode", f"reverse:{upstream_url}@0", *(extra or [])]
        if db_url is not None:
            providers = self.tmp / f"providers-{name}.toml"
            providers.write_text(f'[providers.openai]\nbase_url = "{upstream_url}"\nformat = "openai"\n'
                                 'api_key_env = "OPENAI_API_KEY"\n')
            cmd += ["--set", f"llm_providers={providers}", "--set", f"llm_db={db_url}",
                    "--set", f"llm_table={self.table}", "--set", f"llm_keys={self.keys_file}"]
        proxy = self._service(f"mitmdump ({name})", cmd, LISTENING, env)
        if db_url is not None:
            proxy.wait_for_log("llm-proxy writing rows to")
        return proxy

    # -- loads

    def load_config(self, target: str, load: str) -> dict[str, Any]:
        end = self.endpoints[target]
        proxy = end.stream_proxy if load in STREAM_LOADS else end.proxy
        port = end.port if proxy is None or target == "litellm" else int(proxy.group)
        secret = self.secrets.get(target, self.secrets["addon"])  # direct and bare pass it on, unused
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
        body = small_body(stream=load in STREAM_LOADS)
        connections = {"json": self.args.connections, "single": 1, "stream": self.args.stream_connections,
                       "sse300": self.args.connections, "agent": self.args.connections}[load]
        if load in STREAM_LOADS:
            headers["Accept"] = "text/event-stream"
        headers["x-fake-scenario"] = json.dumps(self.fake_scenario(load), separators=(",", ":"))
        if target == "litellm":
            body["model"] = f"bench-{load}"
        config: dict[str, Any] = {
            "host": end.host, "port": port, "path": "/v1/chat/completions", "warmup": self.args.warmup,
            "duration": self.slice_s, "body": json.dumps(body), "headers": headers, "connections": connections}
        if load == "agent":
            config["workload"] = "agent"  # the load generator builds the session's bodies itself
            if target == "litellm":
                config["model"] = body["model"]
        return config

    @staticmethod
    def fake_scenario(load: str) -> dict[str, Any]:
        """What the fake upstream answers under a load (x-fake-scenario)."""
        if load == "stream":
            return {"input": 27, "output": 20, "deltas": 20, "delay": 0.02}
        return scenario({"sse300": "stream", "agent": "agent"}.get(load, "small"))

    def measure(self, target: str, load: str, profile: bool = False) -> dict[str, Any]:
        config = self.load_config(target, load)
        end = self.endpoints[target]
        proxy = end.stream_proxy if load in STREAM_LOADS else end.proxy
        watched = {"upstream": self.upstream} if proxy is None else {"proxy": proxy, "upstream": self.upstream}
        for service in watched.values():
            assert service is not None and service.proc is not None
            if service.proc.poll() is not None:
                raise BenchError(f"{service.name} exited ({service.proc.returncode}) before {target}/{load}:\n"
                                 + "".join(list(service.lines)[-40:]))
        print(f"  {target:<7} {load:<7} {config['connections']} conn, {self.slice_s:.1f} s ...", end="", flush=True)
        proc = subprocess.Popen([PY, "-m", "bench.load", json.dumps(config)], stdout=subprocess.PIPE,
                                text=True, cwd=REPO, start_new_session=True)
        self.children.append(proc)
        cpu0: dict[str, float | None] = {}
        cpu1: dict[str, float | None] = {}
        t0 = t1 = 0.0
        sys0 = sys1 = None
        result: dict[str, Any] | None = None
        spy: subprocess.Popen[str] | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "MEASURE_START":
                t0 = time.perf_counter()
                cpu0 = {name: s.cpu_seconds() for name, s in watched.items()}  # type: ignore[union-attr]
                if proxy is not None:
                    cpu0["proxy_loop"] = proxy.cpu_seconds(main_thread=True)
                sys0 = system_cpu()
                if profile and proxy is not None:
                    spy = self.start_profiler(proxy)
            elif line == "MEASURE_END":
                t1 = time.perf_counter()
                cpu1 = {name: s.cpu_seconds() for name, s in watched.items()}  # type: ignore[union-attr]
                if proxy is not None:
                    cpu1["proxy_loop"] = proxy.cpu_seconds(main_thread=True)
                sys1 = system_cpu()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        proc.wait()
        self.children.remove(proc)
        if spy is not None:
            self.results["profile"] = self.finish_profiler(spy)
        if result is None:
            raise BenchError(f"the load generator failed for {target}/{load} (exit {proc.returncode})")
        elapsed = t1 - t0
        cpu_s = {name: (cpu1[name] - cpu0[name]) if cpu0.get(name) is not None and cpu1.get(name) is not None
                 else None for name in cpu0}
        cpu_s["loadgen"] = result["loadgen_cpu_pct"] * elapsed / 100 if result["loadgen_cpu_pct"] else None
        if sys0 is not None and sys1 is not None:
            ours = sum(v for k, v in cpu_s.items() if v is not None and k != "proxy_loop")
            # Everything else on the machine (PostgreSQL included), and what the hypervisor stole.
            cpu_s["rest"] = max(0.0, sys1[0] - sys0[0] - ours)
            cpu_s["steal"] = sys1[1] - sys0[1]
        result["cpu_s"], result["window_s"] = cpu_s, elapsed
        if load == "stream":
            print(f" first chunk p50 {fmt(result['first_chunk_ms']['p50'], 2)} ms,"
                  f" end p50 {fmt(result['latency_ms']['p50'], 1)} ms, errors {result['errors']}")
        else:
            print(f" {result['rps']:.0f} req/s, p50 {fmt(result['latency_ms']['p50'], 2)} ms, "
                  f"errors {result['errors']}")
        return result

    # -- profiling

    def start_profiler(self, proxy: Service) -> subprocess.Popen[str] | None:
        spy = shutil.which("py-spy", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        if spy is None:
            print("\n  (--profile: py-spy not found; .venv/bin/pip install py-spy)", end="")
            return None
        assert self.profile_dir is not None
        out = self.profile_dir / "addon-json.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(proxy.pid), "--duration", str(max(1, round(self.slice_s))),
             "--rate", "250", "--nonblocking", "--threads", "--function", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.children.append(proc)
        self._spy_out = out
        return proc

    def finish_profiler(self, spy: subprocess.Popen[str]) -> dict[str, Any]:
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        self.children.remove(spy)
        if not self._spy_out.exists():
            return {"error": f"py-spy wrote nothing: {err.strip()[-500:]}"}
        return summarize_profile(self._spy_out)

    # -- rows

    def count_rows(self, key_id: str | None = None) -> int:
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0] is None:
                return 0
            if key_id is None:
                return conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
            return conn.execute(f"SELECT count(*) FROM {self.table} WHERE key_id = %s", (key_id,)).fetchone()[0]

    def settle_rows(self) -> None:
        """Restore the database, let the writers catch up, stop the addon proxies (flush); count rows."""
        calls = {t: sum(r["calls_completed"] for load in LOADS for r in self.slices.get((t, load), []))
                 for t in PROXIES}
        assert self.relay is not None
        self.relay.signal(signal.SIGUSR2)
        restored = time.perf_counter()
        deadline = restored + 30
        while self.count_rows(KEY_NAMES["outage"]) < calls["outage"] and time.perf_counter() < deadline:
            time.sleep(0.1)
        backlog_s = time.perf_counter() - restored
        for target in PROXIES:
            if target not in self.results["targets"]:
                continue
            proxy = self.endpoints[target].proxy
            assert proxy is not None
            proxy.stop()
            rows = self.count_rows(KEY_NAMES[target])
            entry = {"calls": calls[target], "rows": rows, "ok": rows == calls[target]}
            if target == "outage":
                entry["backlog_s"] = backlog_s
            self.results["targets"][target]["rows"] = entry
            print(f"  {target}: {rows} rows in the table for {calls[target]} calls"
                  + (f" (backlog written {backlog_s:.1f} s after the database came back)"
                     if target == "outage" else ""))

    # -- everything

    def run(self) -> None:
        self.prepare()
        if self.args.profile is not None:
            # kept after the run (not in the temp dir that is removed)
            self.profile_dir = Path(self.args.profile or tempfile.mkdtemp(prefix="llm-proxy-profile-"))
            self.profile_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.start_all()
        for r in range(self.args.rounds):
            print(f"round {r + 1} of {self.args.rounds}")
            for load in self.loads:
                names = self.targets_for(load)
                order = names[r % len(names):] + names[:r % len(names)]
                for target in order:
                    profile = self.args.profile is not None and r == 0 and target == "addon" and load == "json"
                    self.slices.setdefault((target, load), []).append(self.measure(target, load, profile))
        for target in TARGETS:
            measured = {load: pool(self.slices[(target, load)]) for load in LOADS if (target, load) in self.slices}
            if measured:
                self.results["targets"][target] = {"label": TARGETS[target], "loads": measured}
        self.settle_rows()
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        self.results["writer"] = bench_writer(self.pg_url, self.table, self.args.rows, self.count_rows)
        self.results["wall_s"] = time.perf_counter() - started


# ----------------------------------------------------------------- entry point

def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per target and load (default 10; --quick: 3)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="slices each measurement is split into, interleaved across targets (default 3; "
                             "--quick: 1)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, 1 round")
    parser.add_argument("--workload", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads out of {', '.join(WORKLOADS)} (default all): small is the "
                             f"tiny call (json, single, stream loads), stream {STREAM_CHUNKS}-chunk SSE answers, "
                             "agent 150 KB coding-agent bodies")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each slice")
    parser.add_argument("--litellm", metavar="PATH",
                        help="also measure LiteLLM's proxy: the path of a `litellm` binary (not installed by us)")
    parser.add_argument("--connections", type=int, default=8, help="connections of the non-streamed load")
    parser.add_argument("--stream-connections", type=int, default=4, help="connections of the streamed load")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the writer benchmark")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL (a table bench_<random> is used)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--profile", nargs="?", const="", metavar="DIR",
                        help="py-spy the addon proxy during its first json slice (raw stacks kept in DIR)")
    args = parser.parse_args(argv)
    try:
        args.workload = parse_workloads(args.workload)
    except ValueError as e:
        parser.error(str(e))
    if args.litellm and shutil.which(args.litellm) is None:
        parser.error(f"--litellm {args.litellm}: no such executable")
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if min(args.duration, args.rounds, args.connections, args.stream_connections, args.rows) <= 0:
        parser.error("--duration, --rounds, --connections, --stream-connections and --rows must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both end in the cleanup, even when started in the background (SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    bench = Bench(args)
    command = shlex.join(sys.orig_argv) if argv is None else shlex.join([PY, "-m", "bench.run", *argv])
    results = bench.results
    results.update(command=command, machine=machine(), profiled=args.profile is not None, config={
        "duration": args.duration, "rounds": args.rounds, "connections": args.connections,
        "stream_connections": args.stream_connections, "rows": args.rows, "table": bench.table,
        "workloads": args.workload, "litellm": args.litellm})
    print(f"llm-proxy benchmark: {command}")
    status = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        status = 130
    except ServiceError as e:  # BenchError, or a service that would not start
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        status = 2
    finally:
        bench.cleanup()
    if status:
        return status
    results["errors"] = sum(r["errors"] for t in results["targets"].values() for r in t["loads"].values())
    results["checks"] = checks(results)
    print()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    failed = any(c["result"] == "FAIL" for c in results["checks"])
    return 1 if failed or results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
