"""CORS for browser apps that call the proxy directly (option `llm_cors_origins`).

Preflights for metered API paths and `/_llm/api/...` are answered by the proxy
itself; responses to an allowed origin carry Access-Control-Allow-Origin and
`Vary: Origin`. A disallowed origin gets no CORS headers, so the browser
refuses the response as it would without the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from mitmproxy import http

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
MAX_AGE = "600"


class CorsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str] = frozenset()
    any_origin: bool = False

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any_origin or origin in self.origins)

    def allow_origin(self, origin: str) -> str:
        return "*" if self.any_origin else origin


def parse_origins(text: str) -> CorsPolicy:
    """`*`, or a comma list of origins such as `https://app.example.com,http://localhost:3000`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return CorsPolicy()
    if items == ["*"]:
        return CorsPolicy(any_origin=True)
    origins = set()
    for item in items:
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
                or parts.query or parts.fragment or "*" in item:
            raise CorsError(f"llm_cors_origins: {item!r} is not an origin; use scheme://host[:port] "
                            "(e.g. https://app.example.com), a comma list of them, or *")
        origins.add(f"{parts.scheme}://{parts.netloc.lower()}")
    return CorsPolicy(frozenset(origins))


def is_preflight(request: http.Request) -> bool:
    return request.method == "OPTIONS" and "origin" in request.headers \
        and "access-control-request-method" in request.headers


def preflight_response(policy: CorsPolicy, request: http.Request) -> http.Response:
    """204, with the CORS grant only for an allowed origin."""
    headers = {"vary": "Origin"}
    origin = request.headers.get("origin")
    if policy.allows(origin):
        assert origin is not None
        headers.update({
            "access-control-allow-origin": policy.allow_origin(origin),
            "access-control-allow-methods": ALLOWED_METHODS,
            "access-control-max-age": MAX_AGE,
        })
        wanted = request.headers.get("access-control-request-headers")
        if wanted:
            headers["access-control-allow-headers"] = wanted
    return http.Response.make(204, b"", headers)


def add_headers(policy: CorsPolicy, request: http.Request, response: http.Response) -> None:
    """Grant an allowed origin the response (idempotent: may run for headers and again at the end)."""
    origin = request.headers.get("origin")
    if not policy.allows(origin):
        return
    assert origin is not None
    response.headers["access-control-allow-origin"] = policy.allow_origin(origin)
    response.headers["access-control-expose-headers"] = "*"
    vary = response.headers.get("vary", "")
    if "origin" not in vary.lower():
        response.headers["vary"] = f"{vary}, Origin" if vary else "Origin"
