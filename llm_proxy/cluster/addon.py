"""Many proxies, one truth: the addon that makes limits shared (llm_redis) or keeps them local.

It gets the metering addon (LLMProxy) by constructor injection and puts a
Limits implementation into its Access: SharedLimits (Redis) when llm_redis is
set, LocalLimits otherwise. It also sets the output bound that budget
reservations assume for calls without a max output, and adds a "redis" section
to /_llm/health.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from mitmproxy import ctx, exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..limits.local import LocalLimits
from .shared import CONNECT_TIMEOUT_S, CONNECTIONS, TIMEOUT_S, SharedLimits

logger = logging.getLogger(__name__)

_SCHEMES = ("redis", "rediss", "unix")


def mask_url(url: str) -> str:
    """The URL without its password (redis://user:secret@host -> redis://user:***@host)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return url.replace(f"{user}:{parts.password}@", f"{user}:***@", 1)


class Cluster:
    def __init__(self, metering: Any) -> None:
        self.metering = metering
        self.shared: SharedLimits | None = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "llm_redis", str, "",
            "Redis shared by several proxies (redis://host:6379/0): rpm, tpm, parallel, budgets and "
            "llm_max_concurrent then hold across all of them. Empty: each proxy counts alone.",
        )
        loader.add_option(
            "llm_redis_prefix", str, "llm-proxy:",
            "Prefix of every Redis key llm-proxy uses (proxies that share limits share the prefix).",
        )
        loader.add_option(
            "llm_budget_output_tokens", int, 4096,
            "Output tokens a call that names no max output (max_tokens, ...) is assumed to produce "
            "when its cost is reserved against a budget.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llm_budget_output_tokens" in updated:
            if ctx.options.llm_budget_output_tokens <= 0:
                raise exceptions.OptionsError("llm_budget_output_tokens must be a positive number of tokens")
            self.metering.access.output_bound = ctx.options.llm_budget_output_tokens
        if updated & {"llm_redis", "llm_redis_prefix"}:
            self._use(ctx.options.llm_redis, ctx.options.llm_redis_prefix)

    def _use(self, url: str, prefix: str) -> None:
        access = self.metering.access
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
        self.metering.health_parts.pop("redis", None)
        if not url:
            access.limits = LocalLimits(access.limiter)
            return
        if urlsplit(url).scheme not in _SCHEMES:
            raise exceptions.OptionsError(
                f"llm_redis {mask_url(url)!r} is not a Redis URL; use redis://host:6379/0 (rediss:// for TLS)")
        if not prefix or any(c.isspace() for c in prefix):
            raise exceptions.OptionsError("llm_redis_prefix must be non-empty, without spaces")
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=CONNECTIONS, timeout=None, socket_timeout=TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                decode_responses=True,
            )
            client = aioredis.Redis(connection_pool=pool)
        except ValueError as e:
            raise exceptions.OptionsError(f"llm_redis: {e}") from e
        self.shared = SharedLimits(client, LocalLimits(access.limiter), prefix=prefix)
        access.limits = self.shared
        self.metering.health_parts["redis"] = self.shared.state
        logger.info("llm-proxy shares limits through Redis %s (prefix %r)", mask_url(url), prefix)
        self._start()

    def _start(self) -> None:
        try:
            if self.shared is not None:
                self.shared.start()
        except RuntimeError:
            pass  # no event loop yet: running() starts it

    def running(self) -> None:
        self._start()

    def done(self) -> None:
        if self.shared is not None:
            self.shared.stop()
