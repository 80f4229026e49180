"""Secrets: find the client's key, fingerprint it, and mask it wherever it would be stored.

Keys arrive in any of the headers the SDKs use or in Gemini's `key=` query
parameter. Nothing here ever returns a key itself except `client_key`, whose
result is only ever hashed or looked up, and `replace_credentials` is the only
place a provider's real key is written (into the upstream request).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from mitmproxy import http

from . import headers

from .keys.model import hash_secret

KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")  # in order of precedence
_KEY_HEADER_RANK = {name.encode(): rank for rank, name in enumerate(KEY_HEADERS)}
_AUTHORIZATION_RANK = _KEY_HEADER_RANK[b"authorization"]
# Query parameters that carry a credential: Gemini's `key`, and the names other APIs and
# gateways use. Matched after percent-decoding and case-folding, as a server would read them.
SECRET_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "access_token", "token",
                           "x-amz-signature", "x-amz-security-token"})  # the last two: AWS presigned URLs
MASK = "***"
_SIGV4 = "AWS4-"  # AWS4-HMAC-SHA256, AWS4-ECDSA-P256-SHA256 (SigV4a)
SIGV4_IDENTITY = "aws-sigv4:"  # what client_key makes of a SigV4 Authorization: this + the access key id
# A second "?" separates too for servers that split on it, so "?x?key=" hides a key as well.
# A request path has no fragment: mitmproxy reads "?#&key=" as a key, so "#" separates as well.
_PARAM_SEPARATOR = re.compile(r"(&|;|\?|#|%3[Bb])")


def client_key(request: http.Request) -> str | None:
    """The credential the client presented, from whichever place its SDK uses.

    One pass over the raw header fields: this runs on every call, and a
    `Headers.get` per candidate name would scan and lower-case them all each time.
    """
    rank, found = len(KEY_HEADERS), b""
    for name, value in request.headers.fields:
        this = _KEY_HEADER_RANK.get(name.lower())
        if this is not None and this < rank and value:
            rank, found = this, value
    if found:
        value = found.decode("utf-8", "surrogateescape")  # as mitmproxy's Headers decode it
        if rank == _AUTHORIZATION_RANK:
            scheme, _, token = value.partition(" ")
            if scheme.upper().startswith(_SIGV4):
                return _sigv4_identity(token) or value
            value = token.strip() if scheme.lower() == "bearer" and token else value
        return value
    if b"?" not in request.data.path:
        return None
    return request.query.get("key") or None


def _sigv4_identity(params: str) -> str | None:
    """The access key id of a SigV4 `Authorization` (`Credential=AKID/date/region/service/aws4_request`).

    The header's signature changes with every request; the access key id names the
    credential, so it is what a passthrough row's key_id fingerprints (hashed like any key).
    """
    for part in params.split(","):
        name, _, value = part.strip().partition("=")
        if name == "Credential" and value:
            access_key = value.partition("/")[0]
            return f"{SIGV4_IDENTITY}{access_key}" if access_key else None
    return None


def is_signed(request: http.Request, secret: str | None) -> bool:
    """An AWS SigV4-signed request, which must not be altered in any way.

    `secret` is `client_key(request)`, which already read the `Authorization` header (it
    ranks first): a SigV4 one comes back as its access key id, or whole when it names none.
    A presigned URL carries the signature in its query instead.
    """
    if secret is not None and (secret.startswith(SIGV4_IDENTITY) or secret[:5].upper() == _SIGV4):
        return True
    path = request.data.path
    return b"?" in path and b"x-amz-signature=" in path.lower()


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for a key (passthrough key_id)."""
    return fingerprint_of(hash_secret(secret))


def fingerprint_of(secret_hash: str) -> str:
    """The fingerprint from the secret's hash (`sha256:<hex>`), so a key is hashed once per call."""
    return "fp-" + secret_hash[7:19]


def mask_url(url: str) -> str:
    """The URL or path with the value of every credential parameter replaced.

    Names are compared percent-decoded: `?%6Bey=SECRET` authenticates exactly as
    `?key=SECRET` does (mitmproxy and every server decode the query), so it is masked too.
    """
    if "=" not in url:  # nearly every call: no parameter, nothing to mask
        return url
    head, sep, query = url.partition("?")
    if not sep:
        return url
    # `;` separates parameters for many servers, though not for mitmproxy, which writes it
    # back as %3B when it rewrites a query: split on all three.
    parts = _PARAM_SEPARATOR.split(query)
    changed = False
    for index in range(0, len(parts), 2):
        name, eq, _ = parts[index].partition("=")
        if eq and _is_secret_param(name):
            parts[index] = f"{name}={MASK}"
            changed = True
    if not changed:
        return url
    return f"{head}?{''.join(parts)}"


def _is_secret_param(name: str) -> bool:
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="surrogateescape")
    return name.strip().lower() in SECRET_PARAMS


def key_param_to_header(request: http.Request) -> None:
    """Move a Gemini `key=` query parameter into the `x-goog-api-key` header, which Google's API
    reads the same way, so the secret is in no URL that mitmproxy prints, shows or saves."""
    if "key" not in request.query:
        return
    secret = request.query.get("key")
    request.query.pop("key")
    if secret and not any(_KEY_HEADER_RANK.get(name.lower()) is not None for name, _ in request.headers.fields):
        request.headers["x-goog-api-key"] = secret


# How each provider format expects its key.
_PROVIDER_AUTH = {
    "openai": ("authorization", "Bearer {}"),
    "ollama": ("authorization", "Bearer {}"),
    "anthropic": ("x-api-key", "{}"),
    "gemini": ("x-goog-api-key", "{}"),
}


def replace_credentials(request: http.Request, provider_format: str, real_key: str | None,
                        key_header: str | None = None) -> None:
    """Remove whatever key the client sent and, if the provider needs one, set the real one
    (in `key_header` when the provider names one: Azure OpenAI reads `api-key`)."""
    add: tuple[tuple[bytes, bytes], ...] = ()
    if real_key:
        header, template = _PROVIDER_AUTH[provider_format]
        if key_header is not None:
            header, template = key_header, ("Bearer {}" if key_header == "authorization" else "{}")
        add = ((header.encode(), template.format(real_key).encode()),)
    headers.rewrite(request.headers, _KEY_HEADER_RANK, add)
    if b"?" in request.data.path:
        if "key" in request.query:
            request.query.pop("key")
        path = request.path
        stripped = without_key_params(path)
        if stripped != path:  # rewriting an unchanged path would re-encode it for nothing
            request.path = stripped


def without_key_params(path: str) -> str:
    """`path` without any `key=` parameter, however it is separated (`&`, `;`, `%3B`): in keys
    mode the client's credential is the virtual key, which must never reach the provider."""
    head, sep, query = path.partition("?")
    if not sep or "=" not in query:
        return path
    parts = _PARAM_SEPARATOR.split(query)
    kept: list[str] = []
    for index in range(0, len(parts), 2):
        name = parts[index].partition("=")[0]
        if "=" in parts[index] and _is_key_param(name):
            continue
        if kept:
            kept.append(parts[index - 1])  # the separator before this parameter
        kept.append(parts[index])
    rebuilt = "".join(kept)
    return f"{head}?{rebuilt}" if rebuilt else head


def _is_key_param(name: str) -> bool:
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="surrogateescape")
    return name.strip().lower() == "key"
