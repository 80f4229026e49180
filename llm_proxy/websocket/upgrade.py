"""The WebSocket upgrade request: recognised, its key checked, its credential swapped.

The upgrade (`GET /v1/responses` answered `101`) is not a model call and gets
no row of its own; the calls are the response.create messages on the socket.
But it is where the client presents its key, so in keys mode the virtual key
is checked here (a bad one gets a 401/403 instead of a socket) and replaced by
the provider's real key before the upstream handshake. Limits and budgets are
per call, so they are applied to each response.create, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mitmproxy import http

from ..access import Access, judge_key
from ..keys.model import hash_secret
from ..limits.limiter import Refusal
from ..redact import client_key, fingerprint_of, replace_credentials
from ..routing import Route


# flow.metadata key: this upgrade's key was checked here, so the metering addon leaves it alone.
# (Without this package loaded, an upgrade is an ordinary request to the metering addon.)
CLAIMED = "llm_proxy.websocket"


def is_upgrade(request: http.Request) -> bool:
    """A WebSocket opening handshake (RFC 6455: GET with `Upgrade: websocket`)."""
    if request.method != "GET":
        return False
    upgrade = request.headers.get("upgrade")
    return upgrade is not None and upgrade.strip().lower() == "websocket"


@dataclass(slots=True)
class Credential:
    """Who opened the socket: every call on it is theirs."""

    key_hash: str | None  # hash of the credential the client presented (never the secret)
    key_id: str | None  # the virtual key's name, or the passthrough fingerprint


def admit_socket(access: Access, request: http.Request, route: Route) -> tuple[Credential, Refusal | None]:
    """Check the key on the upgrade and put the provider's key in its place (keys mode)."""
    secret = client_key(request)
    key_hash = hash_secret(secret) if secret else None
    credential = Credential(key_hash, fingerprint_of(key_hash) if key_hash else None)
    if not access.keys_required:
        return credential, None  # passthrough: the client's own provider key goes upstream
    found = access.keys.find_hash(key_hash) if key_hash else None
    key, refusal = judge_key(found, key_hash is not None, None, datetime.now(UTC))
    if key is not None:
        credential.key_id = key.name
    if refusal is not None or key is None:
        return credential, refusal
    provider = route.provider
    real = access.provider_keys.get(provider.name)
    if provider.api_key_env and real is None:
        return credential, Refusal(500, f"llm-proxy has no key for provider {provider.name!r}: "
                                        f"set {provider.api_key_env} where the proxy runs", "provider_key_missing")
    replace_credentials(request, provider.format, real)
    return credential, None


def ws_url(url: str) -> str:
    """The socket's URL as a client would write it: ws:// or wss://."""
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):]
    return url
