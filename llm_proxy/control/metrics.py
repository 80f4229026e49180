"""`/_llm/metrics`: Prometheus metrics, in a registry of the proxy's own (prometheus_client).

Counters and histograms are fed from LLMProxy.record_listeners (one Record per
finished call, on the event loop: a few dict updates). The writer and breaker
gauges are read when Prometheus scrapes, from the metering addon's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..record import Record

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TOKEN_TYPES = (("input", "input_tokens"), ("output", "output_tokens"), ("cached", "cached_tokens"),
                ("cache_write", "cache_write_tokens"), ("reasoning", "reasoning_tokens"))
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Most distinct values a client-supplied label (model, key) takes; later ones count as "other".
# Each label set is a series held for the process's life, so an unbounded label would let a
# client grow the proxy by inventing model names or keys.
MAX_LABEL_VALUES = 500
OTHER = "other"
_OVERHEAD = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class _ProxyState(Collector):
    """Gauges read at scrape time from the metering addon (writer, journal, breakers)."""

    def __init__(self, metering: Any) -> None:
        self.metering = metering

    def collect(self) -> Iterable[Metric]:
        writer = self.metering.writer
        queue = GaugeMetricFamily("llm_proxy_writer_queue_rows", "Rows not yet in the database or the journal.")
        queue.add_metric([], writer.queue_depth if writer is not None else 0)
        journal = GaugeMetricFamily("llm_proxy_journal_bytes", "Bytes of rows waiting in the on-disk journal.")
        journal.add_metric([], writer.journal_bytes if writer is not None else 0)
        dropped = CounterMetricFamily("llm_proxy_rows_dropped", "Rows lost: queue or journal full.")
        dropped.add_metric([], writer.stats.rows_dropped if writer is not None else 0)
        breakers = GaugeMetricFamily("llm_proxy_breaker_open",
                                     "1 for each provider/model target whose circuit breaker is open.",
                                     labels=["provider", "model"])
        for target in self.metering.breakers.open_targets():
            provider, _, model = str(target).partition(":")
            breakers.add_metric([provider, model], 1)
        return [queue, journal, dropped, breakers]


class BoundedLabel:
    """The values one label may take: the first `limit` seen, then OTHER."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    def __init__(self, metering: Any) -> None:
        self.metering = metering
        self._model = BoundedLabel()
        self._key = BoundedLabel()
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["provider", "model", "key"]
        self.requests = Counter("llm_proxy_requests", "Calls metered, by status ('none': no response).",
                                [*labels, "status"], registry=self.registry)
        self.tokens = Counter("llm_proxy_tokens", "Tokens by type (input includes cache reads and writes).",
                              [*labels, "type"], registry=self.registry)
        self.cost = Counter("llm_proxy_cost_usd", "Priced cost in USD (calls without a price add nothing).",
                            labels, registry=self.registry)
        self.duration = Histogram("llm_proxy_request_duration_seconds", "Request start to last byte.",
                                  buckets=_SECONDS, registry=self.registry)
        self.ttft = Histogram("llm_proxy_ttft_seconds", "Request start to first response byte.",
                              buckets=_SECONDS, registry=self.registry)
        self.overhead = Histogram("llm_proxy_overhead_seconds",
                                  "Time in the metering addon's hooks per call (request and response).",
                                  buckets=_OVERHEAD, registry=self.registry)
        self.registry.register(_ProxyState(metering))

    def observe(self, record: Record) -> None:
        """A record listener: count one finished call."""
        labels = (record.provider or "", self._model((record.model or "")[:200]), self._key(self._key_label(record)))
        self.requests.labels(*labels, str(record.status) if record.status is not None else "none").inc()
        for name, field in _TOKEN_TYPES:
            value = getattr(record, field)
            if value:
                self.tokens.labels(*labels, name).inc(value)
        if record.cost_usd:
            self.cost.labels(*labels).inc(float(record.cost_usd))
        if record.duration_ms is not None:
            self.duration.observe(record.duration_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.observe(record.ttft_ms / 1000)

    def _key_label(self, record: Record) -> str:
        """A key's name; in keys mode a secret no key has is "unknown" (one label, not one each)."""
        key_id = record.key_id or ""
        access = self.metering.access
        if getattr(access, "keys_required", False) and key_id not in access.keys.by_name:
            return "unknown"
        return key_id

    def render(self) -> bytes:
        return generate_latest(self.registry)


Observer = Callable[[Record], None]
