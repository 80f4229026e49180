"""Delivering a signed webhook: one POST per try, retried on a schedule until a 2xx.

Schedule (contract): the first retry within 5 s, the second within 30 s of the
first, then exponential backoff, at least 6 tries over at least 5 minutes. With
the default unit of 3 s the waits between tries are 3, 24, 48, 96, 192 and 384 s:
7 tries over 12.5 minutes. `llm_webhook_retry_ms` scales the whole schedule
(tests shrink it; production keeps the default).

Each try resolves the host again and refuses private addresses again (DNS can
change after submission), then connects to the checked address itself, with
the URL's host in Host and SNI, so the check and the connection see the same
address. Redirects are not followed (a redirect could point anywhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from . import signing
from .ssrf import Resolver, WebhookURLError, check_url, resolve

logger = logging.getLogger(__name__)

RETRY_FACTORS = (1, 8, 16, 32, 64, 128)  # waits before retries 1..6, in units of llm_webhook_retry_ms
DEFAULT_UNIT_MS = 3000
USER_AGENT = "llm-proxy-webhook/1"


def schedule(unit_seconds: float) -> tuple[float, ...]:
    """Seconds to wait before each retry; len(schedule) + 1 tries in all."""
    return tuple(unit_seconds * factor for factor in RETRY_FACTORS)


@dataclass(slots=True)
class Outcome:
    delivered: bool
    tries: int
    error: str | None = None  # the last failure, when not delivered


def payload_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class Sender:
    """POSTs signed payloads; one httpx client for all deliveries of this proxy."""

    def __init__(self, *, secret: str, allow_private: bool, unit_seconds: float = DEFAULT_UNIT_MS / 1000,
                 timeout: float = 10.0, verify_tls: bool = True, resolver: Resolver = resolve) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.waits = schedule(unit_seconds)
        self.timeout = timeout
        self.resolver = resolver
        self._client = httpx.AsyncClient(trust_env=False, verify=verify_tls, follow_redirects=False,
                                         timeout=httpx.Timeout(timeout))

    async def close(self) -> None:
        await self._client.aclose()

    async def try_once(self, url: str, body: bytes) -> str | None:
        """One delivery attempt; None when the receiver answered 2xx, else why not.

        Raises WebhookURLError when the URL is refused (that does not get better by retrying)."""
        target = await check_url(url, allow_private=self.allow_private, resolver=self.resolver)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": target.host_header,
                   signing.HEADER: signing.sign(self.secret, body)}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            response = await self._client.post(target.pinned_url(), content=body, headers=headers,
                                                extensions=extensions)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        await response.aclose()
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def deliver(self, url: str, body: bytes, *, tries_done: int = 0,
                      after_try: Callable[[int, str | None], Awaitable[None]] | None = None) -> Outcome:
        """Try until a 2xx or the schedule is spent; `tries_done` resumes a delivery cut short by a restart.

        `after_try(tries, error)` is awaited after each failed try (to persist progress)."""
        tries, error = tries_done, None
        while tries <= len(self.waits):
            if tries:
                await asyncio.sleep(self.waits[tries - 1])
            try:
                error = await self.try_once(url, body)
            except WebhookURLError as e:
                logger.warning("llm-proxy webhook refused at delivery: %s", e)
                return Outcome(False, tries + 1, f"refused at delivery: {e}")
            except Exception as e:  # never let one webhook take the runner down
                error = f"{type(e).__name__}: {e}"
            tries += 1
            if error is None:
                return Outcome(True, tries)
            if after_try is not None:
                await after_try(tries, error)
        logger.warning("llm-proxy webhook to %s abandoned after %d tries: %s", _shown(url), tries, error)
        return Outcome(False, tries, error)


def _shown(url: str) -> str:
    """A URL for the log without its query (which may carry a receiver's token)."""
    return url.partition("?")[0]
