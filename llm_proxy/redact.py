"""Secrets: find the client's key, fingerprint it, and mask it wherever it would be stored.

Keys arrive in any of the headers the SDKs use or in Gemini's `key=` query
parameter. Nothing here ever returns a key itself except `client_key`, whose
result is only ever hashed or looked up, and `replace_credentials` is the only
place a provider's real key is written (into the upstream request).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mitmproxy import http

from .keys.model import hash_secret

KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
_KEY_PARAM = re.compile(r"(?i)([?&]key=)[^&#]*")
MASK = "***"


def client_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The credential the client presented, from whichever place its SDK uses."""
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                value = token.strip() if scheme.lower() == "bearer" and token else value
            return value
    return query.get("key") or None


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for a key (passthrough key_id)."""
    return fingerprint_of(hash_secret(secret))


def fingerprint_of(secret_hash: str) -> str:
    """The fingerprint from the secret's hash (`sha256:<hex>`), so a key is hashed once per call."""
    return "fp-" + secret_hash[7:19]


def mask_url(url: str) -> str:
    """The URL or path with any `key=` query value replaced."""
    return _KEY_PARAM.sub(rf"\g<1>{MASK}", url)


# How each provider format expects its key.
_PROVIDER_AUTH = {
    "openai": ("authorization", "Bearer {}"),
    "ollama": ("authorization", "Bearer {}"),
    "anthropic": ("x-api-key", "{}"),
    "gemini": ("x-goog-api-key", "{}"),
}


def replace_credentials(request: http.Request, provider_format: str, real_key: str | None) -> None:
    """Remove whatever key the client sent and, if the provider needs one, set the real one."""
    for name in KEY_HEADERS:
        request.headers.pop(name, None)
    if "key" in request.query:
        request.query.pop("key")
    if real_key:
        header, template = _PROVIDER_AUTH[provider_format]
        request.headers[header] = template.format(real_key)
