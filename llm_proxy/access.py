"""Who may call, how much, and how many at once: decided before anything goes upstream.

With keys in force, a request must present a virtual key (in whatever header
or query parameter its SDK uses); the key is checked, its limits applied, and
the client's credential is swapped for the provider's real key. The global
gate applies in every mode. A refusal is answered locally by the addon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from mitmproxy import http

from .calls import Call
from .config.providers import Providers
from .keys.model import KeyRing, VirtualKey
from . import headers
from .limits.budget import SpendBook
from .limits.estimate import DEFAULT_OUTPUT_BOUND, NOTHING, Estimate, Price, estimate
from .limits.gate import FULL, Gate
from .limits.limiter import Limiter, Refusal
from .limits.local import Limits, LocalLimits
from .redact import replace_credentials
from .routing import split_query
from .scope.filter import may_carry_real_key

logger = logging.getLogger(__name__)

# Flow metadata set by the jobs addon: its runner already holds a gate slot for this call.
GATE_HELD = "llm_proxy.gate_held"
BUDGET_LOAD_WAIT = 5.0  # seconds a budgeted request waits for the start-up spend load


def check_key(
    ring: KeyRing, secret: str | None, model: str | None, now: datetime
) -> tuple[VirtualKey | None, Refusal | None]:
    """The presented key (if known) and, if it may not make this call, the 401/403 to answer."""
    return judge_key(ring.find(secret) if secret else None, bool(secret), model, now)


def judge_key(
    key: VirtualKey | None, presented: bool, model: str | None, now: datetime
) -> tuple[VirtualKey | None, Refusal | None]:
    """check_key once the presented secret has been looked up."""
    if not presented:
        return None, Refusal(401, "no API key: present your llm-proxy key as your SDK's API key", "missing_api_key")
    if key is None:
        return None, Refusal(401, "unknown API key", "invalid_api_key")
    if key.disabled:
        return key, Refusal(403, f"key {key.name!r} is disabled", "key_disabled")
    if key.expired(now):
        expired = key.expires.astimezone(UTC) if key.expires else now
        return key, Refusal(403, f"key {key.name!r} expired on {expired:%Y-%m-%d %H:%M} UTC", "key_expired")
    if not key.allows_model(model):
        return key, Refusal(403, f"key {key.name!r} may not use model {model!r}", "model_not_allowed")
    return key, None


def real_keys(providers: Providers, env: Mapping[str, str]) -> dict[str, str]:
    """The providers' real keys, read once from their api_key_env variables."""
    return {
        p.name: env[p.api_key_env]
        for p in providers.by_name.values()
        if p.api_key_env and env.get(p.api_key_env)
    }


class Access:
    def __init__(self) -> None:
        self.keys = KeyRing()
        # Once keys are in force they stay in force until llm_keys itself is changed: a keys
        # file emptied, truncated or rewritten with no keys while the proxy runs revokes every
        # key (each call gets a 401); it never turns the proxy into a passthrough that would
        # forward clients' virtual secrets to providers.
        self.keys_required = False
        self.limiter = Limiter()
        # Every limit goes through here: counted by this proxy (LocalLimits) or, with llm_redis,
        # by all proxies sharing a Redis (the cluster addon puts its own in).
        self.limits: Limits = LocalLimits(self.limiter)
        self.price: Price | None = None  # prices a call's estimate (set by the metering addon)
        self.output_bound = DEFAULT_OUTPUT_BOUND  # llm_budget_output_tokens
        self.spend = SpendBook()
        self.gate: Gate | None = None
        self.provider_keys: dict[str, str] = {}

    def use_keys(self, keys: KeyRing) -> None:
        """Put a (re)loaded key ring in force; an empty ring after keys were in force refuses all."""
        self.keys = keys
        self.keys_required = self.keys_required or bool(len(keys))
        self.spend.use_keys(keys)

    def use_keys_file(self, keys: KeyRing) -> None:
        """A new llm_keys setting: passthrough again if (and only if) its file holds no keys."""
        self.keys_required = False
        self.use_keys(keys)

    def use_providers(self, providers: Providers) -> None:
        self.provider_keys = real_keys(providers, os.environ)

    async def admit(self, flow: http.HTTPFlow, call: Call) -> Refusal | None:
        """Check, reserve and rewrite credentials; None lets the call go upstream."""
        if self.keys_required:
            refusal = await self._admit_key(flow.request, call)
            if refusal is not None:
                return refusal
        if self.gate is not None and not flow.metadata.get(GATE_HELD):
            outcome = await self.limits.enter_gate(self.gate, call)
            if outcome is not None:
                self.release(call)
                if outcome == FULL:
                    return Refusal(503, "llm-proxy queue is full; try again shortly", "queue_full",
                                   {"retry-after": "1"})
                return Refusal(429, f"llm-proxy waited {self.gate.timeout:g}s for a free slot", "queue_timeout",
                               {"retry-after": "1"})
            if call.done:  # the client left while it waited: hand the slot straight on
                self.release(call)
        elif call.done:  # the client left while its key was checked: its row is made already
            self.release(call)
            self.limits.settle(call, None, None)
        return None

    async def _admit_key(self, request: http.Request, call: Call) -> Refusal | None:
        found = self.keys.find_hash(call.key_hash) if call.key_hash else None  # hashed once, in open_call
        wall = datetime.now(UTC)
        key, refusal = judge_key(found, call.key_hash is not None, call.model, wall)
        if key is not None:
            call.key_id = key.name  # rows of a known key carry its name, refused or not
        if refusal is not None or key is None:
            return refusal
        spend = None
        if key.budget is not None:
            spend = await self._spend_of(key.name)
            if spend is None:
                return Refusal(503, "budget state unavailable (database unreachable); try again later",
                               "budget_unavailable", {"retry-after": "5"})
        refusal = await self.limits.admit_key(key, call, self.estimate(request, call, key), spend, wall)
        if refusal is not None:
            return refusal
        provider = call.route.provider
        real = self.provider_keys.get(provider.name)
        if provider.api_key_env and real is None:
            self.release(call)
            # The operator's error, which no retry mends: a 401 (never a 5xx an SDK would retry).
            return Refusal(401, f"llm-proxy has no key for provider {provider.name!r}: "
                                f"set {provider.api_key_env} where the proxy runs", "provider_key_missing")
        if not may_carry_real_key(call.route.api, request.method, split_query(request.path)[0]):
            real = None  # llm_record=all: a non-model path is recorded, but never sent with the real key
        replace_credentials(request, provider.format, real, provider.key_header)
        return None

    def estimate(self, request: http.Request, call: Call, key: VirtualKey) -> Estimate:
        """The call's tpm estimate and budget bound, for a key that has either limit."""
        if key.tpm is None and key.budget is None:
            return NOTHING
        # A WebSocket call's body is its response.create message, not the upgrade request's (empty) body.
        body = call.request_body if isinstance(call.request_body, (bytes, bytearray)) else headers.body(request)
        return estimate(len(body), call.max_output, call.route.provider.name, call.model,
                        self.price, output_bound=self.output_bound, priced=key.budget is not None)

    async def _spend_of(self, name: str) -> Decimal | None:
        deadline = time.monotonic() + BUDGET_LOAD_WAIT
        while not self.spend.loaded.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.spend.spend(name)

    def release(self, call: Call) -> None:
        """Give back the call's slots; safe to call more than once."""
        self.limits.release(call)

    def finished(self, call: Call, total_tokens: int | None, cost: Decimal | None = None) -> None:
        """The call's row is made: slots back, reservations settled with its real usage.

        Its real cost reaches the budget in the same event-loop step (the writer's put, right after).
        """
        self.release(call)
        self.limits.settle(call, total_tokens if call.key_id in self.keys.by_name else None, cost)
