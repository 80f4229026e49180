"""Where each attempt of a call goes, and what it sends: "fallback rewriting".

For a target (provider, model) and the API the client speaks, `build_request`
works out the whole upstream request: URL and path shape, headers with the
target's own credentials, and the body with the target's model, translated
between OpenAI chat and Anthropic messages when the formats differ.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .. import apis
from ..config.models import ModelRoute, Target
from ..config.providers import Provider
from ..redact import KEY_HEADERS
from ..translate import chat_to_messages, messages_to_chat

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MAX_BACKOFF = 8.0
ANTHROPIC_VERSION = "2023-06-01"

# Suffix of each OpenAI-format API under a provider's openai_base.
_OPENAI_SUFFIX = {
    apis.OPENAI_CHAT: "/chat/completions",
    apis.OPENAI_COMPLETIONS: "/completions",
    apis.OPENAI_EMBEDDINGS: "/embeddings",
    apis.OPENAI_RESPONSES: "/responses",
}
_HOP_BY_HOP = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade", "accept-encoding",
})
_VENDOR_PREFIXES = ("anthropic-", "openai-", "x-stainless-", "x-goog-")

# How the translated reply goes back: (target API, translation name).
CHAT_TO_MESSAGES = "chat->messages"  # client speaks Anthropic, target speaks OpenAI chat
MESSAGES_TO_CHAT = "messages->chat"  # client speaks OpenAI chat, target speaks Anthropic


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[Target, ...]  # the first is the primary
    retries: int

    @property
    def rescues(self) -> bool:
        return len(self.targets) > 1 or self.retries > 0


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    target: Target
    api: str  # the API shape the target is spoken to in
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    translation: str | None = None


def make_plan(primary: Target, route: ModelRoute | None, default_retries: int) -> Plan:
    fallbacks = tuple(t for t in (route.fallbacks if route else ()) if t != primary)
    retries = route.retries if route is not None and route.retries is not None else default_retries
    return Plan((primary, *fallbacks), retries)


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before retry number `attempt` (0-based): Retry-After if given, else full jitter."""
    if retry_after is not None:
        return retry_after
    return random.uniform(0, min(MAX_BACKOFF, 0.5 * 2 ** attempt))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms`, then `retry-after` in seconds (an HTTP date is ignored)."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        pass
    return None


def forward_headers(headers: Mapping[str, str], *, same_provider: bool, same_format: bool) -> dict[str, str]:
    """The client's headers fit for another attempt: no hop-by-hop, and credentials only
    for the provider they were meant for; vendor headers only within one format."""
    out = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or (lower in KEY_HEADERS and not same_provider):
            continue
        if not same_format and lower.startswith(_VENDOR_PREFIXES):
            continue
        out[lower] = value
    out["accept-encoding"] = "identity"
    return out


def _auth(target_api: str, real_key: str, key_header: str | None = None) -> dict[str, str]:
    """The key as the API expects it (Gemini's OpenAI-compatible endpoint takes a Bearer token)."""
    if key_header is not None and key_header != "authorization":
        return {key_header: real_key}  # the provider's own header (Azure OpenAI: api-key)
    if target_api == apis.ANTHROPIC_MESSAGES:
        return {"x-api-key": real_key}
    if target_api == apis.GEMINI_GENERATE:
        return {"x-goog-api-key": real_key}
    return {"authorization": f"Bearer {real_key}"}


def missing_key_reason(provider: Provider) -> str:
    """Why a call cannot go to `provider` when the proxy holds no key for it (a 401)."""
    return f"no key for provider {provider.name!r}: set {provider.api_key_env} where the proxy runs"


def shape_reason(provider: Provider, client_api: str) -> str:
    """Why `provider` can never serve a call of this API shape (a 400)."""
    return f"provider {provider.name!r} ({provider.format}) cannot serve a {client_api} call"


def serves_shape(provider: Provider, client_api: str) -> bool:
    """Whether `build_request` can send a `client_api` call to `provider` at all (the same
    branches, without building anything: the request hook asks this of every planned target)."""
    if client_api in _OPENAI_SUFFIX:
        return provider.openai_base is not None or (
            client_api == apis.OPENAI_CHAT and provider.format == "anthropic")
    if client_api == apis.ANTHROPIC_MESSAGES:
        return provider.format == "anthropic" or provider.openai_base is not None
    if client_api == apis.GEMINI_GENERATE:
        return provider.format == "gemini"
    if client_api in (apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE, apis.OLLAMA_EMBED):
        return provider.format == "ollama"
    return False


def build_request(
    *,
    client_api: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: Any,
    target: Target,
    provider: Provider,
    primary: Provider,
    requested_model: str | None,
    real_key: str | None,
) -> UpstreamRequest | str:
    """The request for one attempt, or the reason this target cannot serve the call.

    The primary provider keeps the credentials the request already carries (the
    client's own key in passthrough, the real key in keys mode); any other
    provider gets its real key from `real_key`, or is skipped without one.
    """
    model = target.model or requested_model
    same_provider = provider.name == primary.name
    if not same_provider and not real_key and provider.api_key_env:
        return missing_key_reason(provider)
    target_api, translation, url = client_api, None, None
    new_body = dict(body) if isinstance(body, dict) else body
    params = dict(query) if same_provider else {k: v for k, v in query.items() if k != "key"}
    if client_api in _OPENAI_SUFFIX:
        if provider.openai_base is not None:
            url = provider.base_url + provider.openai_base + _OPENAI_SUFFIX[client_api]
        elif client_api == apis.OPENAI_CHAT and provider.format == "anthropic" and isinstance(body, dict):
            target_api, translation = apis.ANTHROPIC_MESSAGES, MESSAGES_TO_CHAT
            url, new_body, params = provider.base_url + "/v1/messages", chat_to_messages(body, model), {}
    elif client_api == apis.ANTHROPIC_MESSAGES:
        if provider.format == "anthropic":
            url = provider.base_url + "/v1/messages"
        elif provider.openai_base is not None and isinstance(body, dict):
            target_api, translation = apis.OPENAI_CHAT, CHAT_TO_MESSAGES
            url = provider.base_url + provider.openai_base + "/chat/completions"
            new_body, params = messages_to_chat(body, model), {}
    elif client_api == apis.GEMINI_GENERATE and provider.format == "gemini":
        method_name = path.rsplit(":", 1)[-1]
        url = f"{provider.base_url}/v1beta/models/{model}:{method_name}"
    elif client_api in (apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE, apis.OLLAMA_EMBED) and provider.format == "ollama":
        url = provider.base_url + path[path.index("/api/"):]
    if url is None:
        return shape_reason(provider, client_api)
    if translation is None and isinstance(new_body, dict) and "model" in new_body and model:
        new_body["model"] = model
    out_headers = forward_headers(headers, same_provider=same_provider, same_format=translation is None)
    if real_key and not same_provider:
        out_headers.update(_auth(target_api, real_key, provider.key_header))
    if target_api == apis.ANTHROPIC_MESSAGES:
        out_headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    out_headers["content-type"] = "application/json"
    if params:
        url += "?" + urlencode(params)
    content = json.dumps(new_body).encode() if new_body is not None else b""
    return UpstreamRequest(target, target_api, method, url, out_headers, content, translation)
