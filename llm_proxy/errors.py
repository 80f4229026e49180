"""Answers the proxy gives itself, in the error shape of the API the client speaks.

SDKs pick their exception class from the status and read the message from
the body, so a local 401/403/429 must look exactly like the provider's own:
an OpenAI client gets `{"error": {...}}`, an Anthropic client
`{"type": "error", "error": {...}}`, a Gemini client `{"error": {"code",
"status", ...}}` and an Ollama client `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mitmproxy import http

# Error `type` per status, per family (what each provider sends for that status;
# PROVIDER_USAGE.md section 9). The translation package uses the same tables.
ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
    529: "overloaded_error",
}
OPENAI_TYPES = {
    400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
    404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
}


def family(api: str, provider_format: str) -> str:
    """The error shape a client expects: its API's family, else the provider's format."""
    for prefix in ("openai", "anthropic", "gemini", "ollama", "bedrock"):
        if api.startswith(prefix):
            return prefix
    if api == "vertex-anthropic":
        return "anthropic"
    return provider_format


def error_body(shape: str, status: int, message: str, code: str | None = None) -> dict[str, object]:
    if shape == "anthropic":
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    if shape == "gemini":
        return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
    if shape == "ollama":
        return {"error": message}
    if shape == "bedrock":
        return {"message": message}  # AWS JSON protocol errors: the SDKs read `message`
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def local_response(
    api: str, provider_format: str, status: int, message: str, *,
    code: str | None = None, headers: Mapping[str, str] | None = None,
) -> http.Response:
    """A complete response mitmproxy can send instead of contacting the provider."""
    body = error_body(family(api, provider_format), status, message, code)
    return http.Response.make(
        status,
        json.dumps(body).encode(),
        {"content-type": "application/json", "x-llm-proxy": "local", **(headers or {})},
    )


def forbidden_host_response(host: str) -> http.Response:
    """403 for a regular-mode request to a host that is not a provider's (llm_only_providers)."""
    message = (f"llm-proxy carries only calls to LLM providers (llm_only_providers is on); "
               f"{host!r} is not a provider host in providers.toml")
    return http.Response.make(403, json.dumps({"error": {"message": message, "type": "forbidden_host"}}),
                              {"content-type": "application/json"})
