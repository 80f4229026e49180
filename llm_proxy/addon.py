"""The mitmproxy addon: options, and hooks that stay thin.

Each hook hands its flow to plain functions (routing, calls, usage, pricing)
and, at the end, a Record to the writer thread. Nothing here blocks or raises
into mitmproxy: a metering failure costs a row, never a client's call.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from . import apis, health
from .access import Access
from .calls import LOST_ATTEMPT, Call, close_call, comment, fallback_record, open_call, unreadable_call
from .config.pricing import PriceBook, load_pricing
from .config.providers import ConfigError, Providers, load_providers
from .errors import forbidden_host_response, local_response
from .failures import FailureLog
from .config.hostnames import is_provider_host
from .keys.model import KeyRing
from .keys.dbstore import DB as DB_KEYS, DbKeysWatcher, watch_db_keys
from .keys.reloader import KeysWatcher
from .keys.store import read_keyring
from .limits.gate import Gate
from .limits.limiter import Refusal
from .option_values import reject_unknown, reject_unparsable
from .paths import DEFAULT_PRICING, DEFAULT_PROVIDERS, default_db_url
from .pricer import Pricer
from .record import Record
from .config.models import Target
from .rescue.breaker import Breakers
from .rescue.relay import Relay, RelayJob
from .rescue.servable import unservable
from .scope.filter import is_model_call
from .scope.passage import pass_on
from .routing import Route, Router
from .storage.schema import DEFAULT_TABLE
from .storage.setup import writer_from_options
from .storage.writer import Writer
from .stream.lazy import meter_for
from .usage import stream_parser
from .websocket.upgrade import CLAIMED as WEBSOCKET

logger = logging.getLogger(__name__)
failures = FailureLog(logger)

STOPPED_IN_FLIGHT = "llm-proxy stopped before the call ended (the provider may have billed it)"

_STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl",
                 "application/vnd.amazon.eventstream")
_WRITER_OPTIONS = {"llm_db", "llm_table", "llm_body_max_bytes", "llm_budget_refresh", "llm_journal",
                   "llm_journal_max_mb", "llm_writer_max_mb"}
_GATE_OPTIONS = {"llm_max_concurrent", "llm_queue_max", "llm_queue_timeout"}
_RESCUE_OPTIONS = {"llm_breaker_failures", "llm_breaker_cooldown", "llm_attempt_timeout", "ssl_insecure"}


class LLMProxy:
    def __init__(self) -> None:
        self.providers = Providers([])
        self.router = Router(self.providers, 0)
        self.pricer = Pricer(PriceBook({}))
        self.writer: Writer | None = None
        self.access = Access()
        self.access.price = lambda provider, model, usage: self.pricer.usage(provider, None, model, usage)
        self.log_bodies = True
        self.only_providers = False
        self.record_all = False  # llm_record=all (set by the scope addon): rows for non-model calls too
        self.keys_watcher: KeysWatcher | DbKeysWatcher | None = None
        self.breakers = Breakers()
        self.relay = Relay(lambda: self.providers, lambda: self.access.provider_keys, self.breakers)
        self._calls: weakref.WeakKeyDictionary[http.HTTPFlow, Call] = weakref.WeakKeyDictionary()
        # Other addons (metrics, jobs) observe each finished row here instead of importing this one;
        # a listener runs on the event loop, so it must be quick and must not block.
        self.record_listeners: list[Callable[[Record], None]] = []
        # Other addons' sections of /_llm/health (e.g. "redis"), by name; each returns a dict or None.
        self.health_parts: dict[str, Callable[[], dict[str, object] | None]] = {}

    def load(self, loader) -> None:
        loader.add_option(
            "llm_providers", str, str(DEFAULT_PROVIDERS),
            "providers.toml: where each LLM provider lives (base_url, format, hosts, api_key_env).",
        )
        loader.add_option(
            "llm_pricing", str, str(DEFAULT_PRICING),
            "pricing.toml: USD per 1M tokens per provider and model prefix.",
        )
        loader.add_option(
            "llm_db", str, "",
            "Where rows go: postgresql://... or sqlite:///path.db. "
            "Empty: $DATABASE_URL, else an SQLite file in $LLM_PROXY_HOME (~/.llm-proxy).",
        )
        loader.add_option("llm_table", str, DEFAULT_TABLE, "Table name for the rows (created from schema.sql).")
        loader.add_option(
            "llm_journal", str, "",
            "Directory of the on-disk journal that keeps rows while the database is down. "
            "Empty: $LLM_PROXY_HOME/journal/<table>.",
        )
        loader.add_option("llm_journal_max_mb", int, 1024, "Size cap of the journal in MB; beyond it new rows are dropped.")
        loader.add_option("llm_log_bodies", bool, True, "Store request and response bodies in the rows.")
        loader.add_option(
            "llm_body_max_bytes", int, 1 << 20,
            "Largest body stored per column, in bytes of JSON; bigger ones are stored as a truncation marker.",
        )
        loader.add_option(
            "llm_keys", str, "",
            "keys.toml of virtual keys (made with `llm-proxy keys`). Empty, or a file with no keys: "
            "passthrough, clients use their own provider keys. Reloaded live when it changes. "
            "`db`: table llm_keys of llm_db (PostgreSQL), shared by several proxies, changes live within 1 s.",
        )
        loader.add_option(
            "llm_max_concurrent", int, 0,
            "Most calls in flight upstream at once; more wait in a fair queue. 0: no limit.",
        )
        loader.add_option("llm_queue_timeout", int, 30, "Seconds a call may wait in the queue before a 429.")
        loader.add_option("llm_queue_max", int, 1000, "Most calls waiting in the queue; beyond it a 503.")
        loader.add_option(
            "llm_budget_refresh", int, 5,
            "Seconds between re-reads of budget spend from PostgreSQL (other proxies' calls count too).",
        )
        loader.add_option(
            "llm_retries", int, 0,
            "Retries per target for a retryable failure, for models without their own `retries` "
            "(the SDKs retry too, so the default is 0).",
        )
        loader.add_option(
            "llm_attempt_timeout", int, 60,
            "Seconds an attempt of a rescued call may take to produce its first output before it counts as failed.",
        )
        loader.add_option("llm_breaker_failures", int, 5, "Consecutive failures that open a target's circuit breaker.")
        loader.add_option("llm_breaker_cooldown", int, 30, "Seconds a circuit breaker stays open before a probe.")
        loader.add_option(
            "llm_writer_max_mb", int, 256,
            "Most MB of rows the writer holds in memory (queued, or waiting for the database when "
            "there is no journal); beyond it new rows are dropped and counted in /_llm/health.",
        )
        loader.add_option(
            "llm_only_providers", bool, False,
            "Regular mode: answer 403 to requests for hosts that are not a provider's, instead of "
            "passing them through unmetered (for a proxy that must carry nothing but metered calls).",
        )
        reject_unparsable(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        try:
            if "llm_providers" in updated:
                self.providers = load_providers(Path(ctx.options.llm_providers))
            if "llm_pricing" in updated:
                self.pricer = Pricer(load_pricing(Path(ctx.options.llm_pricing)))
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        # Read per call on the hot path: mitmproxy's option lookup costs more than an attribute.
        self.log_bodies = ctx.options.llm_log_bodies
        self.only_providers = ctx.options.llm_only_providers
        if ctx.options.llm_body_max_bytes < 1024:
            raise exceptions.OptionsError("llm_body_max_bytes must be at least 1024")
        if "llm_providers" in updated:
            self.access.use_providers(self.providers)
        self.router = Router(self.providers, ctx.options.llm_retries)
        if "llm_keys" in updated:
            self._load_keys()
        if updated & _GATE_OPTIONS:
            self._configure_gate()
        if updated & _RESCUE_OPTIONS:
            self._configure_rescue()
        if updated & _WRITER_OPTIONS:
            self._start_writer()
        if ctx.options.connection_strategy != "lazy":
            # Lazy: no upstream connection before our request hook has routed the call.
            ctx.options.update(connection_strategy="lazy")

    def _health(self) -> dict[str, object]:
        return health.health(self.writer, self.access.gate, self.breakers.open_targets(), len(self.access.keys),
                             self.health_parts)

    def _load_keys(self) -> None:
        if self.keys_watcher is not None:
            self.keys_watcher.stop()
            self.keys_watcher = None
        path_text = ctx.options.llm_keys
        self.health_parts.pop("keys_db", None)
        if not path_text:
            self.access.use_keys_file(KeyRing())
            return
        if path_text == DB_KEYS:
            try:
                self.keys_watcher = watcher = watch_db_keys(ctx.options.llm_db or default_db_url(), self.access)
            except ConfigError as e:
                raise exceptions.OptionsError(f"llm_keys: {e}") from e
            self.health_parts["keys_db"] = watcher.state
            return
        path = Path(path_text)
        if not path.is_file():
            raise exceptions.OptionsError(
                f"llm_keys: {path} does not exist; make it with `llm-proxy keys --keys-file {path} create NAME`"
            )
        try:
            self.access.use_keys_file(read_keyring(path))
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        missing = sorted(p.name for p in self.providers.by_name.values()
                         if p.api_key_env and p.name not in self.access.provider_keys)
        if missing:
            logger.warning("llm-proxy: no real key in the environment for %s; their calls will get a 401",
                           ", ".join(missing))
        self.keys_watcher = KeysWatcher(path, self.access.use_keys)
        self.keys_watcher.start()

    def _configure_gate(self) -> None:
        limit, waiting, timeout = (ctx.options.llm_max_concurrent, ctx.options.llm_queue_max,
                                   ctx.options.llm_queue_timeout)
        if limit < 0 or waiting < 0 or timeout < 0:
            raise exceptions.OptionsError("llm_max_concurrent, llm_queue_max and llm_queue_timeout cannot be negative")
        self.access.gate = Gate(limit, waiting, timeout) if limit else None

    def _configure_rescue(self) -> None:
        opts = ctx.options
        if opts.llm_retries < 0 or opts.llm_attempt_timeout <= 0 or opts.llm_breaker_failures <= 0 \
                or opts.llm_breaker_cooldown < 0:
            raise exceptions.OptionsError(
                "llm_retries >= 0, llm_attempt_timeout > 0, llm_breaker_failures > 0 and llm_breaker_cooldown >= 0"
            )
        self.breakers.failures, self.breakers.cooldown = opts.llm_breaker_failures, float(opts.llm_breaker_cooldown)
        self.relay.attempt_timeout = float(opts.llm_attempt_timeout)
        self.relay.verify_tls = not opts.ssl_insecure  # the same trust as mitmproxy's own upstream connections

    def running(self) -> None:
        reject_unknown(ctx.options)  # every addon has declared its options by now
        if self.keys_watcher is not None:
            self.keys_watcher.start()
        if not self.relay.running:
            self.relay.start()

    def _start_writer(self) -> None:
        try:
            writer = writer_from_options(ctx.options, self.access.spend)
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        old, self.writer = self.writer, writer
        if old is not None:
            old.stop()  # first: it must let go of the journal the new writer opens
        writer.start()

    def done(self) -> None:
        # Calls still in flight reached the provider and may be billed: each gets its row now,
        # with what is known so far, before the writer's last flush.
        for flow in list(self._calls):
            self._finish(flow, interrupted=STOPPED_IN_FLIGHT)
        # The rows first: nothing after them may keep them from the database or the journal.
        if self.writer is not None:
            self.writer.stop()
        if self.keys_watcher is not None:
            self.keys_watcher.stop()
        self.relay.stop()

    # --- flow hooks --------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = flow.request
        if request.path.startswith(health.PREFIX):
            flow.response = health.answer(request.path, self._health())
            return
        reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
        route = self.route_of(flow)
        if route is None:
            if self.only_providers and not reverse:
                flow.response = forbidden_host_response(request.host)
            return
        if WEBSOCKET in flow.metadata:
            return  # a WebSocket upgrade llm_proxy.websocket took: it checked the key, its calls are its messages
        if not self.record_all and not is_model_call(route.api):
            refusal = pass_on(self.access, request, route)  # not a model call: no row, no body kept
            if refusal is not None:
                flow.response = local_response(route.api, route.provider.format, refusal.status, refusal.message,
                                               code=refusal.code, headers=refusal.headers)
            return
        try:
            refusal = await self._admit(flow, route, by_model=reverse and route.upstream_url is None)
        except Exception as e:
            # Fail closed: a call the proxy could not check must not reach the provider unchecked.
            failures.failed("llm-proxy could not handle a call", e, context=f"{request.method} {request.path}")
            if flow not in self._calls:
                self._calls[flow] = unreadable_call(flow, route)  # it still gets its row
            refusal = Refusal(500, "llm-proxy could not handle this call; its log says why", "internal_error")
        if refusal is not None:
            call = self._calls.get(flow)
            if call is not None:
                call.local = True
            flow.response = local_response(
                route.api, route.provider.format, refusal.status, refusal.message,
                code=refusal.code, headers=refusal.headers,
            )

    def route_of(self, flow: http.HTTPFlow) -> Route | None:
        """The provider and API shape of a flow, or None when it is not a call this proxy meters."""
        request = flow.request
        return self.router.route(
            reverse=isinstance(flow.client_conn.proxy_mode, ReverseMode), scheme=request.scheme,
            host=request.host, port=request.port, path=request.path,
        )

    async def _admit(self, flow: http.HTTPFlow, route: Route, *, by_model: bool) -> Refusal | None:
        """Open the call, plan it and check its key; a Refusal is answered locally."""
        call = self._calls[flow] = open_call(flow, route)
        plan = self.router.plan(route, call.model, by_model=by_model)
        if isinstance(plan, str):
            return Refusal(400, plan, "model_not_found")
        refusal = await self.access.admit(flow, call)
        if refusal is None and is_model_call(route.api) and (
                plan.rescues or plan.targets[0] != Target(route.provider.name)):
            blocked = unservable(plan, route.api, route.provider, self.providers, self.access.provider_keys,
                                 call.model)
            if blocked is not None:  # every target would fail: the client's or the operator's error
                return Refusal(blocked.status, blocked.message, blocked.code)
            # Another provider, another format or a second chance: the relay runs the attempts.
            self.relay.jobs[flow.id] = RelayJob(plan, route.api, call.model, route.provider, flow.request.url)
            flow.request.url = self.relay.url_for(flow.id)
        return refusal

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Regular mode with llm_only_providers: refuse a tunnel to a non-provider host up front."""
        if not self.only_providers or flow.response is not None:
            return
        request = flow.request
        if not is_provider_host(self.providers, request.host, request.port):
            flow.response = forbidden_host_response(request.host)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self._calls.get(flow)
        response = flow.response
        if call is None or response is None or not 200 <= response.status_code < 300:
            return
        content_type = response.headers.get("content-type", "")
        streamed = any(t in content_type for t in _STREAM_TYPES) or (
            call.streaming and call.route.api == apis.GEMINI_GENERATE
        )
        if not streamed:
            return
        parser = stream_parser(call.route.api, strip_usage_chunk=call.strip_usage_chunk)
        if parser is None:
            response.stream = True  # a stream we cannot meter still must not be buffered
            return
        call.meter = meter_for(parser, content_type, strip=call.strip_usage_chunk)
        response.stream = call.meter

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow, *, interrupted: str | None = None) -> None:
        call = self._calls.pop(flow, None)
        if call is None:
            return
        call.done = True
        job = self.relay.jobs.pop(flow.id, None)
        if job is not None:
            self.relay.settle(job)
        try:
            record, outcome = close_call(flow, call, log_bodies=self.log_bodies, interrupted=interrupted)
            if job is not None:
                record.cost_usd = self.pricer.relayed(record, job)
            else:
                record.cost_usd = Decimal(0) if call.local else self.pricer.call(record, outcome.usage)
            flow.comment = comment(record)
        except Exception as e:
            failures.failed("llm-proxy could not build the row of a call", e,
                            context=f"{flow.request.method} {flow.request.path}")
            record = fallback_record(flow, call, f"llm-proxy could not read this call's answer ({type(e).__name__}); "
                                                 "tokens and cost unknown")
        lost = flow.metadata.get(LOST_ATTEMPT)
        if lost is not None:  # a job's re-run: its row names the run a restart cut off
            record.attempts = [lost, *(record.attempts or [])]
        self.deliver(call, record)

    def deliver(self, call: Call, record: Record) -> None:
        """A finished call's row: its slots back, its listeners told, the row to the writer.

        Also the end of every WebSocket turn (llm_proxy.websocket), which has no flow of its own.
        """
        self.access.finished(call, record.total_tokens, record.cost_usd)
        for listener in self.record_listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("llm-proxy record listener %r failed", listener)
        if self.writer is not None:
            self.writer.put(record)

