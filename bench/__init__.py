"""Benchmark (`python -m bench.run`): the fake upstream direct, through bare mitmdump, and through mitmdump with the addon.

Usage (from the repo root, PostgreSQL reachable, nothing else needed)::

    .venv/bin/python -m bench.run                  # 10 s per measurement in 3 rounds (about 4 minutes)
    .venv/bin/python -m bench.run --quick          # 3 s per measurement, 1 round (about 1.5 minutes)
    .venv/bin/python -m bench.run --duration 30 --rounds 5 --connections 16 --json results.json
    .venv/bin/python -m bench.run --profile        # also py-spy the addon under load (needs py-spy;
                                                   # the profiled run's numbers are distorted, see below)
    .venv/bin/python -m bench.run --workload stream,agent --litellm /path/to/litellm

Options: ``--duration S`` seconds measured per target and load (default 10;
``--quick``: 3), ``--rounds R`` (default 3; ``--quick``: 1), ``--connections
N`` (non-streamed load, default 8), ``--stream-connections N`` (default 4),
``--rows N`` (writer benchmark, default 100,000), ``--pg URL`` (default
``$LLM_PROXY_TEST_PG`` or ``postgresql://postgres@127.0.0.1:5432/test``),
``--json PATH`` (write every number), ``--profile [DIR]``, ``--workload
LIST`` (default ``small,stream,agent``), ``--warmup S`` (default 1),
``--litellm PATH``. Exit status: 0 when every target passes and no request
failed, 1 otherwise, 2 if the run broke.

Workloads (issue 13; bodies and scenarios in ``bench/workloads.py``):
``small`` is the three loads described below (``json``, ``single``,
``stream``); ``stream`` adds the load ``sse300``: SSE answers of 300 chunks
sent back to back, ``--connections`` connections, against the bare mitmdump
with ``stream_large_bodies=1``; ``agent`` adds the load ``agent``: a coding
agent's session of 20 calls whose bodies (system prompt, tool schemas,
history) grow from 122 KB to 179 KB, each resending the conversation so far
(the load generator builds them: a 150 KB body cannot travel in its command
line). The outage proxy is measured under ``small`` only. ``--litellm PATH``
starts LiteLLM's proxy (``PATH --config <tmp>/litellm.yaml --host 127.0.0.1
--port <free> --num_workers 1``, one model per load carrying that load's fake
scenario as ``extra_headers``, no database) and measures it under ``json``,
``sse300`` and ``agent``. The report's "Workloads" table and the targets of
issue 13 compare each workload's throughput with bare mitmdump's (>= 90%)
and, when measured, with LiteLLM's (>= 8x).

What one run does, on one machine:

1. Makes a temp dir with a keys file holding two virtual keys made by the real
   CLI (``llm-proxy keys --keys-file F create bench``, and ``bench-outage`` so
   the rows of the two addon proxies can be told apart), a providers file that
   points "openai" at the fake upstream with ``api_key_env = "OPENAI_API_KEY"``
   (set, fake, in the proxies' environment), and picks a fresh table
   ``bench_<random>`` (created by the proxies, dropped at the end).
2. Starts everything once: the fake upstream (``python -m tests.fakes.upstream
   --port 0 --delay 0.001``), the database relay (``python -m
   tests.fakes.tcprelay``) and four mitmdumps, all with ``--listen-host
   127.0.0.1 --set confdir=<tmp> --set flow_detail=0 --mode
   reverse:<upstream>@0`` and port 0:

   - ``direct``: no proxy, the load generator talks to the fake upstream;
   - ``bare``: mitmdump, no addon (for the ``stream`` load a second bare
     mitmdump with ``--set stream_large_bodies=1``: by default mitmdump
     buffers a chunked body whole, so its "first chunk" would be the end);
   - ``addon``: ``mitmdump -s addon/llm_proxy.py`` with ``llm_db`` on
     PostgreSQL and ``llm_keys`` (the client sends its virtual key as Bearer);
   - ``outage``: the same, but ``llm_db`` goes through the relay, which is
     cut (SIGUSR1) once the writer has connected and stays cut through every
     measurement; at the end it is restored (SIGUSR2) and the run reports how
     long the backlog took to reach the table.

3. Measures with one load generator (``bench/load.py``: raw asyncio HTTP/1.1
   keep-alive, closed loop, a process of its own, 1 s warm-up per slice):

   - ``json``: non-streamed ``POST /v1/chat/completions`` (small body, fake
     usage), ``--connections`` connections: requests/s, p50 and p99 latency;
   - ``single``: the same on one connection: latency without queueing (for
     information: with 8 connections a saturated proxy's latency is mostly
     its queue, i.e. its throughput);
   - ``stream``: ``"stream": true``, 20 deltas 20 ms apart (scenario header),
     ``--stream-connections`` connections: time to the first body chunk and
     to the end of the stream. The client asks for
     ``stream_options.include_usage`` itself, so every target's upstream sends
     the same events (for a client that does not, the addon adds it and the
     fake sends one more event 20 ms later: a slower last chunk that would not
     be the proxy's doing).

   Each target gets the same total time per load, ``--duration``, split into
   ``--rounds`` slices; the slices of one load run back to back for every
   target, in an order rotated each round. Noise that comes and goes (other
   processes, a hypervisor stealing time: these are shared 2-core VMs) then
   hits every target alike, and the ratios to bare mitmdump stay meaningful.
   Slices are pooled: requests/s over the whole time, percentiles over every
   request. The table also shows the spread of requests/s across rounds and
   the CPU used during the windows by the proxy, the upstream, the load
   generator and the rest of the machine (PostgreSQL included; 100% is one
   core), plus the time the hypervisor stole; a window where the rest of the
   machine used over 25% of a core is flagged. It also gives the proxy's CPU
   time per request (and that of its event-loop thread alone, the rest being
   the addon's writer and other threads): unlike requests/s, it hardly moves
   when the machine's capacity does, so "CPU per request, bare / addon" is
   printed (for information) beside the throughput target.
4. The writer alone, in this process: ``Writer`` with ``PostgresSink``,
   ``--rows`` realistic Records (small bodies) put as fast as a loop can,
   timed from the first put until ``writer.stats.rows_written`` has them all.
5. Prints markdown tables (absolute numbers, each proxy's ratio to bare
   mitmdump and the delay it adds over it), the targets of issue 5 with
   PASS/FAIL, the row check, the exact command and the machine; with
   ``--json``, writes it all.
6. Cleans up in any case (the processes it started, by pid; the table; the
   temp dir), also on Ctrl-C or SIGTERM.

Files: ``bench/run.py`` (this: processes, measurements, the writer),
``bench/load.py`` (the load generator), ``bench/report.py`` (tables, targets),
``bench/instructions.py`` with ``bench/parts.py`` (``python -m
bench.instructions``: the addon's cost per request by part, counted by
callgrind, repeatable where requests/s is not), ``bench/soak.py`` (``python -m
bench.soak``: the proxy's RSS over 300,000 mixed calls, and one row per call),
``bench/reports.py`` (``python -m bench.reports``: the usage API over 1,000,000
rows), ``bench/dashboard.py`` (``python -m bench.dashboard``: proxy throughput
with and without the dashboard refreshing every second).

Row check: after the measurements the addon proxies are stopped (SIGTERM
flushes) and the table must hold one row per call the load generator completed
through each (warm-ups included).

``--profile [DIR]``: runs ``py-spy record`` (raw collapsed stacks, threads,
non-blocking) on the ``addon`` proxy during its first ``json`` slice and prints
the top frames by own and by inclusive time (raw stacks kept in DIR, default a
new ``/tmp/llm-proxy-profile-*``). py-spy counts a thread waiting inside
psycopg as busy, so the writer thread's share is overstated: the CPU-per-thread
column of the table is the better measure of it. py-spy
is not a dependency: put it in the venv for such a run (``.venv/bin/pip
install py-spy``). The sampler competes for the same 2 cores, so the numbers of
a profiled run are marked as distorted.
"""
