"""A mitmproxy script for `bench.instructions`: the addon with some of its parts switched off.

Loaded as `mitmdump -s bench/parts.py` with LLM_PROXY_BENCH_PARTS naming the
stage to stop after, so that the instruction counts of successive stages
attribute the addon's cost per request to its parts:

- ``hooks``: a do-nothing addon with the same four flow hooks (mitmproxy's
  dispatch of them, nothing of ours);
- ``loaded``: LLMProxy configured as usual (writer, relay, keys watcher
  running) but every flow hook a no-op;
- ``request``: the request hook as usual (route, key check, credentials);
  the end of a call only releases its key slot;
- ``response``: also the end of a call as usual (usage, price, Record), but
  the row is not handed to the writer;
- ``all`` (or unset): the addon as shipped.

Benchmark scaffolding only: nothing here runs in a real proxy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitmproxy import http  # noqa: E402

from llm_proxy.addon import LLMProxy  # noqa: E402
from llm_proxy.storage.writer import Writer  # noqa: E402

STAGES = ("hooks", "loaded", "request", "response", "all")


class HooksOnly:
    """The flow hooks LLMProxy has, doing nothing."""

    async def request(self, flow: http.HTTPFlow) -> None:
        return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        return None

    def error(self, flow: http.HTTPFlow) -> None:
        return None


class Loaded(HooksOnly, LLMProxy):
    """LLMProxy with everything set up, its flow hooks shadowed by HooksOnly's no-ops."""


class RequestOnly(LLMProxy):
    def _finish(self, flow: http.HTTPFlow) -> None:
        call = self._calls.pop(flow, None)
        if call is not None:
            self.access.release(call)


class WriterOff(Writer):
    def put(self, record: object) -> None:  # type: ignore[override]
        return None


def _build(stage: str) -> object:
    if stage not in STAGES:
        raise SystemExit(f"LLM_PROXY_BENCH_PARTS must be one of {', '.join(STAGES)}, not {stage!r}")
    if stage == "hooks":
        return HooksOnly()
    if stage == "loaded":
        return Loaded()
    if stage == "request":
        return RequestOnly()
    if stage == "response":
        import llm_proxy.addon as addon_module

        addon_module.Writer = WriterOff  # type: ignore[misc]  # rows are built, never queued
    return LLMProxy()


addons = [_build(os.environ.get("LLM_PROXY_BENCH_PARTS") or "all")]
