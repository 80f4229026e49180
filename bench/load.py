"""Closed-loop HTTP/1.1 load generator on raw asyncio streams, for bench.run.

It runs in a process of its own (bench.run starts it as a subprocess) so that
it never shares a GIL with the proxy, the fake upstream or the orchestrator.
Each of N keep-alive connections sends one request (fixed bytes with a
Content-Length body; with `workload`, the bodies of that workload of
`bench/workloads.py` in turn, as an agent's session resends its growing
conversation), reads the whole response (Content-Length, chunked or
until EOF), and sends the next. Per request it takes time.perf_counter at the
send, at the first body chunk and at the end of the response.

    python -m bench.load '<json config>'

The config (see `Config`) names host, port, path, headers, body, connections,
warmup and duration. The process prints `MEASURE_START` when the warm-up ends
and `MEASURE_END` when the measured window closes (bench.run samples the CPU
time of the processes under test at those two lines), then one line
`RESULT <json>` (summaries, and every latency of the window in microseconds).
A request counts in the window when its response completed inside it;
requests still in flight at the end are waited for (so a proxy under test
sees only whole calls) and count as errors if they never finish.
Any status other than 200, any connection error and any malformed response is
an error; the connection is then reopened.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

_DRAIN_TIMEOUT = 15.0  # seconds in-flight requests may take to finish after the window


@dataclass
class Config:
    host: str
    port: int
    path: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 8
    warmup: float = 1.0
    duration: float = 10.0
    # instead of `body`: a workload of bench/workloads.py whose bodies each connection sends in turn
    # (an agent's session); built here, since a 150 KB body cannot travel in a command line
    workload: str | None = None
    model: str | None = None  # with `workload`: the model its bodies name instead (a proxy's own model name)


@dataclass
class Sample:
    start: float
    first: float  # first body chunk (the response head for an empty body)
    end: float


class BadResponse(Exception):
    pass


class State:
    def __init__(self) -> None:
        self.stopping = False
        self.samples: list[Sample] = []
        self.errors: dict[str, int] = {}
        self.calls_completed = 0  # responses fully read, whatever their status, warm-up included
        self.connects = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def build_request(cfg: Config, body_text: str | None = None) -> bytes:
    body = (cfg.body if body_text is None else body_text).encode()
    lines = [f"POST {cfg.path} HTTP/1.1", f"Host: {cfg.host}:{cfg.port}"]
    lines += [f"{name}: {value}" for name, value in cfg.headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, float, bool]:
    """Read one response; returns (status, time of the first body chunk, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    first = time.perf_counter()
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise BadResponse(f"bad status line {status_line[:60]!r}")
    status = int(status_line[9:12])
    length = -1
    chunked = False
    keep_alive = status_line.startswith(b"HTTP/1.1")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = b"close" not in value.lower()
    if chunked:
        seen_data = False
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await reader.readexactly(size + 2)
            if not seen_data:
                seen_data = True
                first = time.perf_counter()
    elif length >= 0:
        if length:
            await reader.readexactly(length)
    else:
        await reader.read()  # until EOF
        keep_alive = False
    return status, first, keep_alive


async def connection(cfg: Config, requests: list[bytes], state: State) -> None:
    turn = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    perf = time.perf_counter
    samples = state.samples
    while not state.stopping:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
            except OSError as e:
                state.error(f"connect: {type(e).__name__}")
                await asyncio.sleep(0.05)
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state.connects += 1
        assert reader is not None
        request = requests[turn % len(requests)]
        turn += 1
        start = perf()
        try:
            writer.write(request)
            status, first, keep_alive = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadResponse, ValueError) as e:
            state.error(f"{type(e).__name__}")
            writer.close()
            writer = None
            continue
        end = perf()
        state.calls_completed += 1
        if status == 200:
            samples.append(Sample(start, first, end))
        else:
            state.error(f"HTTP {status}")
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `values` (q in 0..100)."""
    if not values:
        return None
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def summarize(values_s: list[float]) -> dict[str, float | None]:
    ms = sorted(v * 1000 for v in values_s)
    return {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "mean": sum(ms) / len(ms) if ms else None, "max": ms[-1] if ms else None}


async def run(cfg: Config) -> dict[str, Any]:
    state = State()
    if cfg.workload:
        from bench.workloads import bodies

        texts = bodies(cfg.workload)
        if cfg.model:
            texts = [json.dumps({**json.loads(text), "model": cfg.model}) for text in texts]
        requests = [build_request(cfg, body) for body in texts]
    else:
        requests = [build_request(cfg)]
    tasks = [asyncio.create_task(connection(cfg, requests, state)) for _ in range(cfg.connections)]
    await asyncio.sleep(cfg.warmup)
    errors_before = sum(state.errors.values())
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    print("MEASURE_START", flush=True)
    await asyncio.sleep(cfg.duration)
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    print("MEASURE_END", flush=True)
    errors_in_window = sum(state.errors.values()) - errors_before
    state.stopping = True
    done, pending = await asyncio.wait(tasks, timeout=_DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
        state.error("still in flight after the drain timeout")
    for task in done:
        if task.exception() is not None:
            state.error(f"crash: {task.exception()!r}")
    window = [s for s in state.samples if t0 <= s.end <= t1]
    elapsed = t1 - t0
    return {
        "connections": cfg.connections,
        "duration_s": elapsed,
        "requests": len(window),
        "rps": len(window) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": summarize([s.end - s.start for s in window]),
        "first_chunk_ms": summarize([s.first - s.start for s in window]),
        # every request of the window, for pooling slices: microseconds
        "latency_us": [round((s.end - s.start) * 1e6) for s in window],
        "first_chunk_us": [round((s.first - s.start) * 1e6) for s in window],
        "errors": sum(state.errors.values()),
        "errors_in_window": errors_in_window,
        "error_kinds": state.errors,
        "calls_completed": state.calls_completed,  # all responses read, warm-up and drain included
        "connects": state.connects,
        "loadgen_cpu_pct": 100 * (cpu1 - cpu0) / elapsed if elapsed > 0 else None,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m bench.load '<json config>'")
    cfg = Config(**json.loads(argv[0]))
    result = asyncio.run(run(cfg))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
