"""The provider-neutral usage of one call.

Every parser maps its provider's fields onto these semantics (DESIGN.md):
input counts all input including cache reads and writes, output includes
reasoning, and a count the provider did not report stays None (unknown),
never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    # The part of cache_write_tokens written with Anthropic's 1-hour TTL (priced higher).
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    web_search_requests: int | None = None

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def known(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


def count(obj: Any, *path: str) -> int | None:
    """The int at `obj[path...]`, or None when any step is missing or not a number."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return None
    return int(obj)


def detail(obj: Any, details_key: str, field: str) -> int | None:
    """A count inside an optional `*_details` object: absent object -> None, absent field -> 0.

    Providers omit zero fields inside a details object they did send, but an
    absent details object means the provider did not report that class at all.
    """
    details = obj.get(details_key) if isinstance(obj, dict) else None
    if not isinstance(details, dict):
        return None
    return count(details, field) or 0


def error_text(obj: Any) -> str | None:
    """The error an API body reports, in any provider's shape, as one line.

    OpenAI `{"error": {"type", "message"}}`, Anthropic `{"type": "error",
    "error": {...}}`, Gemini `{"error": {"status", "message"}}`, Ollama
    `{"error": "..."}`, Responses `{"type": "error", "code", "message"}`.
    """
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, str) and err:
        return err
    if not isinstance(err, dict):
        if obj.get("type") != "error":
            return None
        err = obj
    kind = err.get("type") if err.get("type") != "error" else None
    kind = kind or err.get("status") or err.get("code")
    message = err.get("message") or ""
    text = f"{kind}: {message}" if kind else str(message)
    return text or "error"
