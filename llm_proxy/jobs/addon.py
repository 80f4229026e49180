"""The jobs addon: `Prefer: respond-async`, /_llm/jobs/<id>, the runner, webhooks and budget alerts.

Placed after the control plane and before the metering addon (LLMProxy), which
it gets by constructor injection. A queued job's call is sent by the runner to
this proxy's own listening port (reverse mode) or through it as an HTTP proxy
(regular mode), marked with an `x-llm-proxy-job` header that carries the job id
and a random token of this process: this hook checks and strips the marker, so
a client cannot forge it, and the call then runs through the metering addon
like any other (key checks, limits, routing, retries, fallbacks, its one row).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
from datetime import timedelta
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode

from .. import apis
from ..access import GATE_HELD, judge_key
from ..calls import KEY_HASH, LOST_ATTEMPT
from ..errors import local_response
from ..keys.model import hash_secret
from ..option_values import reject_unparsable
from ..paths import default_db_url
from ..redact import client_key, fingerprint
from ..storage.dsn import DatabaseURLError, check_table_name, parse_db_url
from . import api, credentials
from .api import api_error, json_answer
from .alerts import BudgetAlerts
from .loopback import call_request, server_for
from .runner import Request, Runner
from .ssrf import WebhookURLError, check_url, parse_url
from .store import JobRow, JobStore, now
from .submission import MARKER, WEBHOOK_HEADER, credential_of, new_job, wants_async
from .webhooks import DEFAULT_UNIT_MS, Sender, payload_bytes

logger = logging.getLogger(__name__)

EXPIRE_EVERY = 60.0
_MARKER = MARKER.encode()


class Jobs:
    def __init__(self, metering: Any) -> None:
        self.metering = metering
        self.token = secrets.token_urlsafe(32)  # authenticates this process's own job calls
        self.store: JobStore | None = None
        self.runner: Runner | None = None
        self.sender: Sender | None = None
        self.alerts: BudgetAlerts | None = None
        self.secret = ""
        self.allow_private = False
        self._credentials: dict[str, credentials.Credential] = {}  # passthrough jobs without a secret
        self._tasks: set[asyncio.Task[Any]] = set()
        self._delivering: set[str] = set()
        self._main: asyncio.Task[None] | None = None
        self._node = ""
        metering.record_listeners.append(self._observe)

    # --- options ------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("llm_jobs_concurrent", int, 4,
                          "Most async jobs (Prefer: respond-async) running at once; they also wait for "
                          "llm_max_concurrent like any call.")
        loader.add_option("llm_job_ttl", int, 24, "Hours a finished job stays readable at /_llm/jobs/<id>.")
        loader.add_option("llm_jobs_node", str, "",
                          "This proxy's name in llm_jobs (it runs the jobs it accepted). Empty: host name "
                          "and listening ports, stable across restarts on the same ports.")
        loader.add_option("llm_webhook_secret", str, os.environ.get("LLM_PROXY_WEBHOOK_SECRET", ""),
                          "Secret that signs webhooks (llm-signature header); also seals passthrough jobs' "
                          "API keys in llm_jobs. Empty: $LLM_PROXY_WEBHOOK_SECRET, else webhooks are refused.")
        loader.add_option("llm_webhook_allow_private", bool, False,
                          "Allow webhooks to loopback, private and link-local addresses (local receivers, tests).")
        loader.add_option("llm_webhook_retry_ms", int, DEFAULT_UNIT_MS,
                          "Wait before a webhook's first retry, in ms; later waits are 8, 16, 32, 64 and 128 "
                          "times it (7 tries over 12.5 minutes by default). Lower it only for tests.")
        loader.add_option("llm_webhook_timeout", int, 10, "Seconds one webhook POST may take.")
        loader.add_option("llm_alert_webhook", str, "",
                          "URL that gets a signed POST when a key reaches 50%, 80% and 100% of its budget.")
        reject_unparsable(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if opts.llm_jobs_concurrent <= 0 or opts.llm_job_ttl <= 0:
            raise exceptions.OptionsError("llm_jobs_concurrent and llm_job_ttl must be positive")
        if opts.llm_webhook_retry_ms <= 0 or opts.llm_webhook_timeout <= 0:
            raise exceptions.OptionsError("llm_webhook_retry_ms and llm_webhook_timeout must be positive")
        if opts.llm_alert_webhook:
            try:
                parse_url(opts.llm_alert_webhook)
            except WebhookURLError as e:
                raise exceptions.OptionsError(f"llm_alert_webhook: {e}") from None
            if not opts.llm_webhook_secret:
                raise exceptions.OptionsError("llm_alert_webhook needs llm_webhook_secret (alerts are signed); "
                                              "e.g. --set llm_webhook_secret=$(openssl rand -hex 32)")
        self.secret, self.allow_private = opts.llm_webhook_secret, opts.llm_webhook_allow_private
        if updated & {"llm_db", "llm_table"} or self.store is None:
            try:
                database = parse_db_url(opts.llm_db or default_db_url())
                table = check_table_name(opts.llm_table)
            except DatabaseURLError as e:
                raise exceptions.OptionsError(str(e)) from e
            old, self.store = self.store, JobStore(database, table)
            if old is not None:
                old.close()
        if updated & {"llm_webhook_secret", "llm_webhook_allow_private", "llm_webhook_retry_ms",
                      "llm_webhook_timeout", "ssl_insecure"} or self.sender is None:
            self.sender = Sender(secret=self.secret, allow_private=self.allow_private,
                                 unit_seconds=opts.llm_webhook_retry_ms / 1000, timeout=opts.llm_webhook_timeout,
                                 verify_tls=not opts.ssl_insecure)
        access = self.metering.access
        self.alerts = BudgetAlerts(opts.llm_alert_webhook, self.store, self.sender, lambda: access.keys,
                                   lambda: access.spend) if opts.llm_alert_webhook else None
        if self.runner is not None:
            self.runner.concurrency = opts.llm_jobs_concurrent
            self.runner.store = self.store

    def running(self) -> None:
        if self._main is None:
            self._main = asyncio.get_running_loop().create_task(self._start())

    def done(self) -> None:
        # Running jobs stay `running` in the table: the next start runs them once more.
        if self.runner is not None:
            self.runner.stop()
        if self._main is not None:
            self._main.cancel()
        if self.store is not None:
            self.store.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- this proxy: its node name and listening addresses --------------------------------

    def _servers(self) -> list[Any]:
        proxyserver = ctx.master.addons.get("proxyserver")
        return [s for s in proxyserver.servers if s.listen_addrs] if proxyserver is not None else []

    def node(self) -> str:
        if not self._node:
            name = ctx.options.llm_jobs_node
            if not name:
                ports = sorted({addr[1] for s in self._servers() for addr in s.listen_addrs})
                name = f"{socket.gethostname()}:{','.join(map(str, ports))}" if ports else ""
            self._node = name
        return self._node

    async def _start(self) -> None:
        while not self.node():  # the listening sockets come up shortly after `running`
            await asyncio.sleep(0.05)
        assert self.store is not None
        node = self.node()
        self.runner = Runner(self.store, node, ctx.options.llm_jobs_concurrent, lambda: self.metering.access.gate,
                             self._prepare, lambda job_id: f"{job_id} {self.token}", self._ended)
        warned = False
        while True:
            try:
                requeued, failed = await self.store.run(lambda s: s.recover(node, now()))
                pending = await self.store.run(lambda s: s.pending_webhooks(node))
                break
            except Exception as e:
                if not warned:
                    logger.warning("llm-proxy jobs: database unreachable (%s); retrying every 2 s", e)
                    warned = True
                await asyncio.sleep(2)
        if requeued or failed:
            logger.warning("llm-proxy jobs: %d job(s) were running when the proxy stopped: %d run once more "
                           "(marked rerun), %d had already been re-run and failed", requeued + failed, requeued,
                           failed)
        for row in pending:
            self._spawn(self._deliver(row.id))
        self._spawn(self._expire_loop())
        await self.runner.loop()

    async def _expire_loop(self) -> None:
        while True:
            try:
                cutoff = now() - timedelta(hours=ctx.options.llm_job_ttl)
                assert self.store is not None
                await self.store.run(lambda s: s.expire(cutoff))
            except Exception as e:
                logger.debug("llm-proxy jobs: expiry failed: %s", e)
            await asyncio.sleep(EXPIRE_EVERY)

    # --- hooks --------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = flow.request
        marked, prefer = False, b""
        for name, value in request.headers.fields:  # one pass over the raw fields: this runs on every call
            name = name.lower()
            if name == _MARKER:
                marked = True
            elif name == b"prefer":
                prefer = value
        if marked:
            self._job_call(flow)
            return
        if request.path.startswith(api.PREFIX):
            try:
                flow.response = await self._api(flow)
            except Exception:
                logger.exception("llm-proxy jobs API failed on %s %s", request.method, request.path)
                flow.response = api_error(500, "the jobs API failed on this request; the proxy's log says why")
            return
        if prefer and request.method == "POST" and wants_async(prefer.decode("latin-1")):
            try:
                response = await self._submit(flow)
            except Exception:
                # Fail closed: the client asked for a job, not for a call it would wait for.
                logger.exception("llm-proxy could not queue a job for %s", request.path)
                response = api_error(500, "llm-proxy could not queue this job; its log says why")
            if response is not None:
                flow.response = response

    def _job_call(self, flow: http.HTTPFlow) -> None:
        """A job's own call: check and strip the marker, then let it go on to metering."""
        value = flow.request.headers.pop(MARKER, "")
        job_id, _, token = value.partition(" ")
        active = self.runner.active.get(job_id) if self.runner is not None else None
        if active is None or active.request is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            flow.response = api_error(403, f"{MARKER} is llm-proxy's own header; clients may not send it")
            return
        if active.gate is not None:
            flow.metadata[GATE_HELD] = True
        if active.request.key_hash:
            flow.metadata[KEY_HASH] = active.request.key_hash
        if active.request.scheme and isinstance(flow.client_conn.proxy_mode, RegularMode):
            flow.request.scheme = active.request.scheme
        flow.metadata["llm_proxy.job"] = job_id
        if active.job.rerun:
            flow.metadata[LOST_ATTEMPT] = {
                "job": job_id, "status": None,
                "error": "an earlier run of this job was cut off when llm-proxy stopped; the provider may have billed it",
            }
        active.request_id = flow.id  # the llm_requests row's request_id
        assert self.store is not None
        self._spawn(self.store.run(lambda s: s.started_call(job_id, flow.id)))

    # --- submitting -----------------------------------------------------------------------

    async def _submit(self, flow: http.HTTPFlow) -> http.Response | None:
        """Queue a metered POST: 202 with the job's URL, or the error the client must see now."""
        request = flow.request
        mode = flow.client_conn.proxy_mode
        if not isinstance(mode, (ReverseMode, RegularMode)):
            return None
        route = self.metering.route_of(flow)
        if route is None:
            return None  # not a call this proxy meters: it passes on untouched
        shape = (route.api, route.provider.format)
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            body = None
        if apis.wants_stream(route.api, request.path.partition("?")[0], body):
            return local_response(*shape, 400, "a streamed call cannot be answered asynchronously: drop "
                                  "'Prefer: respond-async' or ask for a non-streamed answer", code="stream_not_async")
        access = self.metering.access
        secret = client_key(request)
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        if access.keys_required:
            key, refusal = judge_key(access.keys.find(secret) if secret else None, bool(secret), model, now())
            if refusal is not None or key is None:
                assert refusal is not None
                return local_response(*shape, refusal.status, refusal.message, code=refusal.code)
            key_id, credential = key.name, None
        else:
            key_id = fingerprint(secret) if secret else None
            credential = credential_of(request) if secret else None
        webhook = request.headers.get(WEBHOOK_HEADER)
        if webhook is not None:
            if not self.secret:
                return local_response(*shape, 400, "this proxy has no llm_webhook_secret, so it sends no "
                                      "webhooks: drop the llm-webhook header or ask its operator to set one",
                                      code="webhook_not_configured")
            try:
                await check_url(webhook, allow_private=self.allow_private)
            except WebhookURLError as e:
                return local_response(*shape, 400, f"llm-webhook: {e}", code="webhook_refused")
        job_id = "job_" + secrets.token_hex(16)
        job = new_job(job_id, self.node(), mode.full_spec, request, key_id=key_id, credential=credential,
                      secret=self.secret, webhook=webhook)
        assert self.store is not None
        try:
            await self.store.run(lambda s: s.insert(job))
        except Exception as e:
            logger.warning("llm-proxy jobs: cannot queue a job: %s", e)
            return local_response(*shape, 503, "llm-proxy cannot queue this job now (its database is "
                                  "unreachable); try again shortly", code="jobs_unavailable",
                                  headers={"retry-after": "5"})
        if credential is not None and not self.secret:
            self._credentials[job_id] = credential
        if self.runner is not None:
            self.runner.wake()
        url = api.PREFIX + job_id
        return json_answer(202, {"id": job_id, "status": "queued", "status_url": url},
                           {"location": url, "preference-applied": "respond-async"})

    # --- running ------------------------------------------------------------------------

    def _prepare(self, job: JobRow) -> Request | str:
        """Where and how to send a job's call, or why it cannot run."""
        server = server_for(self._servers(), job.mode or "")
        if server is None:
            return f"the proxy no longer listens in the mode that accepted this job ({job.mode})"
        headers = [(n, v) for n, v in job.headers]
        path, key_hash = job.path, None
        if job.needs_credential:
            credential = self._credentials.pop(job.id, None) or (
                credentials.unseal(self.secret, job.id, job.credential) if job.credential else None)
            if credential is None:
                return ("the proxy restarted before this job ran, and in passthrough mode its API key was kept "
                        "only in memory (set llm_webhook_secret to keep it encrypted across restarts); "
                        "submit the call again")
            headers += list(credential.headers)
            path = credential.path or path
        elif self.metering.access.keys_required and job.key_id is not None:
            key = self.metering.access.keys.by_name.get(job.key_id)
            # A key deleted since: a hash no key has, so the call gets the proxy's own 401 and its row.
            key_hash = key.hash if key is not None else hash_secret(secrets.token_hex(16))
        return call_request(job, server, headers, path, key_hash)

    async def _ended(self, job_id: str) -> None:
        await self._deliver(job_id)

    async def _deliver(self, job_id: str) -> None:
        """Deliver the webhook of a finished job (again after a restart), storing progress."""
        if job_id in self._delivering or self.store is None or self.sender is None:
            return
        self._delivering.add(job_id)
        store, sender = self.store, self.sender
        try:
            row = await store.run(lambda s: s.get(job_id))
            if row is None or row.webhook is None or row.webhook_status != "pending":
                return
            body = payload_bytes(api.payload(row))

            async def progress(tries: int, error: str | None) -> None:
                await store.run(lambda s: s.webhook_progress(job_id, tries, error))

            outcome = await sender.deliver(row.webhook, body, tries_done=row.webhook_tries, after_try=progress)
            status = "delivered" if outcome.delivered else "failed"
            await store.run(lambda s: s.webhook_progress(job_id, outcome.tries, outcome.error, status))
        except Exception as e:
            logger.warning("llm-proxy jobs: webhook of %s: %s", job_id, e)
        finally:
            self._delivering.discard(job_id)

    def _observe(self, record: Any) -> None:
        if self.alerts is not None:
            self.alerts.observe(record)

    # --- /_llm/jobs/<id> ------------------------------------------------------------------

    async def _api(self, flow: http.HTTPFlow) -> http.Response:
        request = flow.request
        job_id = request.path.partition("?")[0].removeprefix(api.PREFIX)
        if request.method not in ("GET", "DELETE"):
            return api_error(405, "use GET or DELETE here")
        if not job_id.startswith("job_") or "/" in job_id or len(job_id) > 64:
            return api_error(404, "no such job")
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        token = client_key(request)
        ring = self.metering.access.keys
        admin_key = ctx.options.llm_admin_key
        store = self.store
        assert store is not None
        try:
            row = await store.run(lambda s: s.get(job_id))
        except Exception as e:
            logger.warning("llm-proxy jobs: cannot read job %s: %s", job_id, e)
            return api_error(503, "the jobs table is unreachable; try again shortly")
        denied = api.may_see(token, admin_key, peer, ring, row.key_id if row is not None else None)
        if denied is not None and not (row is None and denied[0] == 404):
            return api_error(*denied)
        if row is None:
            return api_error(404, "no such job (finished jobs are kept llm_job_ttl hours)")
        if request.method == "GET":
            return json_answer(200, api.view(row))
        outcome = await store.run(lambda s: s.cancel(job_id, now()))
        if outcome is None:
            return api_error(404, "no such job")
        if outcome != "cancelled":
            return api_error(409, f"job {job_id} is {outcome}: only a queued job can be cancelled")
        self._credentials.pop(job_id, None)
        if self.runner is not None:
            self.runner.wake()
        self._spawn(self._deliver(job_id))
        row = await store.run(lambda s: s.get(job_id))
        return json_answer(200, api.view(row) if row is not None else {"id": job_id, "status": "cancelled"})

