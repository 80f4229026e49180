"""The control plane under /_llm/: usage, requests, keys, me, metrics, dashboard and CORS.

A mitmproxy addon placed before the metering addon (LLMProxy), which it gets by
constructor injection; LLMProxy knows nothing of it. Everything that touches
the database or a file runs in a small pool of worker threads, each with its
own connection, and is awaited with a timeout: the event loop (and every model
call on it) never waits for a report. `/_llm/health` stays with LLMProxy, and
/_llm/ paths this addon does not know pass on to the addons after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs

from mitmproxy import ctx, exceptions, http

from ..config.errors import ConfigError
from ..failures import FailureLog
from ..keys import admin
from ..keys.admin import KeyExists, KeyFieldError, NoSuchKey
from ..keys.model import KeyRing, VirtualKey, period_start
from ..keys.dbstore import open_store
from ..paths import default_db_url
from ..storage.dsn import DatabaseURLError, check_table_name, parse_db_url
from ..websocket.records import METHOD as WEBSOCKET_METHOD
from . import auth, cors, static
from .answers import AnswerCache
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .params import BadParameter, Filters, UsageQuery, requests_query, usage_query
from .reports import money
from .workers import ApiTimeout, ReportWorkers

logger = logging.getLogger(__name__)
failures = FailureLog(logger)  # a client repeating a failing request gets one traceback, then a count

T = TypeVar("T")
PREFIX = "/_llm/"
API = "/_llm/api/"
HEALTH = "/_llm/health"
MIN_ADMIN_KEY = 16
_KEY_BODY_FIELDS = ("name", *admin.LIMIT_FIELDS)
_ERROR_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 503: "unavailable", 504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    content = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    return http.Response.make(status, content, {"content-type": "application/json",
                                                "cache-control": "no-store", **(headers or {})})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> http.Response:
    return json_response(status, {"error": {"message": message, "type": _ERROR_TYPES.get(status, "error")}},
                         headers)


class OverheadClock:
    """Placed after the metering addon: with ControlPlane's stamps before it, times its hooks."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    def request(self, flow: http.HTTPFlow) -> None:
        self.control.stop_clock(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.control.stop_clock(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self.control.stop_clock(flow, final=True)

    def error(self, flow: http.HTTPFlow) -> None:
        self.control.stop_clock(flow, final=True)


class ControlPlane:
    def __init__(self, metering: Any) -> None:
        self.metering = metering
        self.metrics = Metrics(metering)
        self.admin_key = ""
        self.cors = cors.CorsPolicy()
        self.workers: ReportWorkers | None = None
        self.clock = OverheadClock(self)
        self.answers = AnswerCache()
        self._finished: set[str] = set()  # request ids of calls the metering addon just recorded
        metering.record_listeners.append(self._observe)

    # --- options ------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llm_admin_key", str, os.environ.get("LLM_PROXY_ADMIN_KEY", ""),
            "Bearer token for the control plane under /_llm/ (reports, keys, metrics). Empty: "
            "$LLM_PROXY_ADMIN_KEY, else loopback clients are admins and others get a 403.",
        )
        loader.add_option(
            "llm_cors_origins", str, "",
            "Browser origins allowed to call the proxy (comma list, or *): preflights answered, "
            "Access-Control-Allow-Origin added. Empty: no CORS headers.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llm_admin_key" in updated:
            key = ctx.options.llm_admin_key
            if key and (len(key) < MIN_ADMIN_KEY or any(c.isspace() for c in key)):
                raise exceptions.OptionsError(
                    f"llm_admin_key must be at least {MIN_ADMIN_KEY} characters without spaces; "
                    "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
            self.admin_key = key
        if "llm_cors_origins" in updated:
            try:
                self.cors = cors.parse_origins(ctx.options.llm_cors_origins)
            except cors.CorsError as e:
                raise exceptions.OptionsError(str(e)) from e
        if updated & {"llm_db", "llm_table"}:
            try:
                workers = ReportWorkers(ctx.options.llm_db or default_db_url(), ctx.options.llm_table)
            except DatabaseURLError as e:
                raise exceptions.OptionsError(str(e)) from e
            old, self.workers = self.workers, workers
            if old is not None:
                old.close()

    def running(self) -> None:
        if self.workers is not None:
            self.workers.warm_up()

    def done(self) -> None:
        if self.workers is not None:
            self.workers.close()

    # --- metrics ------------------------------------------------------------------------

    def _observe(self, record: Any) -> None:
        self.metrics.observe(record)
        if record.method != WEBSOCKET_METHOD:  # a WebSocket turn is not a flow: no final hook would take it out
            self._finished.add(record.request_id)

    def start_clock(self, flow: http.HTTPFlow) -> None:
        flow.metadata["llm_proxy.clock"] = time.perf_counter()

    def stop_clock(self, flow: http.HTTPFlow, *, final: bool = False) -> None:
        started = flow.metadata.pop("llm_proxy.clock", None)
        if started is not None:
            flow.metadata["llm_proxy.overhead"] = flow.metadata.get("llm_proxy.overhead", 0.0) + (
                time.perf_counter() - started)
        if final and flow.id in self._finished:
            self._finished.discard(flow.id)
            self.metrics.overhead.observe(flow.metadata.get("llm_proxy.overhead", 0.0))

    # --- hooks --------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = flow.request
        path = request.path.partition("?")[0]
        if self.cors.enabled and "origin" in request.headers:
            if path.startswith(API) or (not path.startswith(PREFIX) and self._metered(flow)):
                flow.metadata["llm_proxy.cors"] = True
                if cors.is_preflight(request):
                    flow.response = cors.preflight_response(self.cors, request)
                    return
        if not path.startswith(PREFIX):
            self.start_clock(flow)
            return
        if path == HEALTH:
            return
        try:
            response = await self._answer(flow, path)
        except ApiError as e:
            response = error_response(e.status, str(e), e.headers)
        except ApiTimeout as e:
            response = error_response(504, str(e))
        except Exception as e:
            failures.failed("llm-proxy control plane failed", e, context=f"{request.method} {path}")
            response = error_response(500, "the control plane failed on this request; the proxy's log says why")
        if response is not None:
            flow.response = response

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.start_clock(flow)
        if flow.metadata.get("llm_proxy.cors") and flow.response is not None:
            cors.add_headers(self.cors, flow.request, flow.response)

    def response(self, flow: http.HTTPFlow) -> None:
        self.start_clock(flow)
        if flow.metadata.get("llm_proxy.cors") and flow.response is not None:
            cors.add_headers(self.cors, flow.request, flow.response)

    def error(self, flow: http.HTTPFlow) -> None:
        self.start_clock(flow)

    def _metered(self, flow: http.HTTPFlow) -> bool:
        return self.metering.route_of(flow) is not None

    # --- dispatch -----------------------------------------------------------------------

    async def _answer(self, flow: http.HTTPFlow, path: str) -> http.Response | None:
        method = flow.request.method
        if path == PREFIX or path.startswith(PREFIX + "static/"):
            self._allow(method, "GET")
            name = static.INDEX if path == PREFIX else path.removeprefix(PREFIX + "static/")
            found = await asyncio.to_thread(static.asset, name)
            if found is None:
                raise ApiError(404, f"no such dashboard file: {path}")
            content, content_type = found
            return http.Response.make(200, content, {"content-type": content_type, "cache-control": "no-cache",
                                                     "x-content-type-options": "nosniff"})
        if path != PREFIX + "metrics" and not path.startswith(API):
            return None  # not ours (e.g. jobs): the addons after this one answer it
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        caller = auth.identify(auth.bearer(flow.request.headers.get("authorization")), self.admin_key, peer,
                               self.metering.access.keys)
        denied = auth.authorize(caller, admin_only=path != API + "me")
        if denied is not None:
            headers = {"www-authenticate": 'Bearer realm="llm-proxy"'} if denied.status == 401 else None
            raise ApiError(denied.status, denied.message, headers)
        assert isinstance(caller, auth.Caller)
        params = parse_qs(flow.request.path.partition("?")[2], keep_blank_values=True)
        try:
            if path == PREFIX + "metrics":
                self._allow(method, "GET")
                body = await asyncio.to_thread(self.metrics.render)
                return http.Response.make(200, body, {"content-type": METRICS_TYPE, "cache-control": "no-store"})
            if path == API + "me":
                self._allow(method, "GET")
                return json_response(200, await self._me(caller, params))
            if path == API + "usage":
                self._allow(method, "GET")
                query = usage_query(params, _now())
                body = await self._cached(flow, lambda: self._workers().run("usage_json", query))
                return http.Response.make(200, body, {"content-type": "application/json", "cache-control": "no-store"})
            if path == API + "requests":
                self._allow(method, "GET")
                page = requests_query(params, _now())
                answer = await self._cached(flow, lambda: self._workers().run("requests", page))
                return json_response(200, answer)
            if path.startswith(API + "requests/"):
                self._allow(method, "GET")
                request_id = path.removeprefix(API + "requests/")
                row = await self._workers().run("request", request_id)
                if row is None:
                    raise ApiError(404, f"no request with request_id {request_id!r}")
                return json_response(200, row)
            if path == API + "keys" or path.startswith(API + "keys/"):
                return await self._keys(method, path.removeprefix(API + "keys").strip("/"), flow.request)
        except BadParameter as e:
            raise ApiError(400, str(e)) from None
        raise ApiError(404, f"no such llm-proxy endpoint: {path}")

    async def _cached(self, flow: http.HTTPFlow, compute: Callable[[], Any]) -> Any:
        """The answer to this exact admin GET, at most 1 s old (answers.py); `Cache-Control:
        no-cache` asks for a fresh one."""
        fresh = "no-cache" in flow.request.headers.get("cache-control", "").lower()
        return await self.answers.get(("admin", flow.request.path), compute, fresh=fresh)

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, f"use {' or '.join(allowed)} here", {"allow": ", ".join(allowed)})

    def _workers(self) -> ReportWorkers:
        if self.workers is None:
            raise ApiError(503, "the control plane has no database configured (llm_db)")
        return self.workers

    # --- me -----------------------------------------------------------------------------

    async def _me(self, caller: auth.Caller, params: dict[str, list[str]]) -> dict[str, Any]:
        if caller.key is None:
            return {"admin": True}
        key = caller.key
        if "key" in params:
            raise BadParameter("key", "a virtual key sees only itself; leave key out")
        query = usage_query(params, _now())
        own = UsageQuery(query.since, query.until, query.group_by,
                         Filters(key=key.name, model=query.filters.model, provider=query.filters.provider))
        usage = await self._workers().run("usage", own)
        (view,) = await self._views([key])
        return {"key": view, "period_start": _iso(period_start(key.period, _now())), "usage": usage}

    # --- keys ---------------------------------------------------------------------------

    def _keys_store(self) -> admin.KeyStore | None:
        """The store llm_keys names (keys.toml or table llm_keys); None in passthrough mode."""
        try:
            return open_store(ctx.options.llm_keys, ctx.options.llm_db or default_db_url())
        except ConfigError as e:
            raise ApiError(409, str(e)) from None

    async def _views(self, keys: list[VirtualKey]) -> list[dict[str, Any]]:
        """Keys as the API shows them, with their spend this period (as a usage report sums it)."""
        now = _now()
        windows = {k.name: period_start(k.period, now) for k in keys}
        spend = await self._workers().run("spend", windows) if keys else {}
        return [{**admin.describe(k, now), "spend_usd": money(spend.get(k.name, Decimal(0)))} for k in keys]

    async def _keys(self, method: str, rest: str, request: http.Request) -> http.Response:
        path = self._keys_store()
        name, _, action = rest.partition("/")
        if not name:
            self._allow(method, "GET", "POST")
            if method == "GET":
                ring = await self._workers().call(path.read) if path else KeyRing()
                views = await self._views(sorted(ring.by_name.values(), key=lambda k: k.name))
                return json_response(200, {"keys": views})
            body = _json_object(request, allowed=_KEY_BODY_FIELDS)
            if not isinstance(body.get("name"), str):
                raise ApiError(400, "name: give the new key's name as a string")
            changes = _changes(body, exclude=("name",))
            writable = self._writable(path)
            key, secret = await self._edit(lambda: admin.create_key(writable, body["name"], changes))
            (view,) = await self._views([key])
            return json_response(201, {**view, "secret": secret})
        if action == "rotate":
            self._allow(method, "POST")
            writable = self._writable(path)
            _, secret = await self._edit(lambda: admin.rotate_key(writable, name))
            return json_response(200, {"secret": secret})
        if action:
            raise ApiError(404, f"no such llm-proxy endpoint: {API}keys/{rest}")
        self._allow(method, "GET", "PATCH", "DELETE")
        if method == "GET":
            ring = await self._workers().call(path.read) if path else KeyRing()
            if name not in ring.by_name:
                raise ApiError(404, f"no key named {name!r}")
            (view,) = await self._views([ring.by_name[name]])
            return json_response(200, view)
        writable = self._writable(path)
        if method == "DELETE":
            await self._edit(lambda: admin.delete_key(writable, name))
            return http.Response.make(204, b"", {"cache-control": "no-store"})
        body = _json_object(request, allowed=(*admin.LIMIT_FIELDS, "disabled"))
        disabled = body.pop("disabled", None)
        if disabled is not None and not isinstance(disabled, bool):
            raise ApiError(400, "disabled: must be true or false")
        changes = _changes(body)
        key = await self._edit(lambda: admin.change_key(writable, name, changes, disabled))
        (view,) = await self._views([key])
        return json_response(200, view)

    def _writable(self, path: admin.KeyStore | None) -> admin.KeyStore:
        if path is None:
            raise ApiError(409, "the proxy runs in passthrough mode (llm_keys is empty): keys can be managed "
                                "over HTTP only when llm_keys names a keys file, e.g. --set llm_keys=keys.toml")
        return path

    async def _edit(self, work: Callable[[], T]) -> T:
        """Change the key store in a worker, then put the new keys in force here at once."""
        path = self._keys_store()
        assert path is not None

        def edit() -> tuple[T, KeyRing]:
            return work(), path.read()

        try:
            result, ring = await self._workers().call(edit)
        except NoSuchKey as e:
            raise ApiError(404, str(e)) from None
        except KeyExists as e:
            raise ApiError(409, str(e)) from None
        except KeyFieldError as e:
            raise ApiError(400, f"{e.field}: {e}") from None
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        self.metering.access.use_keys(ring)
        self.answers.clear()
        return result


def _json_object(request: http.Request, *, allowed: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for field in body:
        if field not in allowed:
            raise ApiError(400, f"{field}: unknown field; use {', '.join(allowed)}")
    return body


def _changes(body: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        return admin.parse_changes({k: v for k, v in body.items() if k not in exclude})
    except KeyFieldError as e:
        raise ApiError(400, f"{e.field}: {e}") from None


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
