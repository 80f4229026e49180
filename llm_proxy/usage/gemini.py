"""Gemini generateContent / streamGenerateContent usage.

`promptTokenCount` includes cached content; tool-use prompt tokens are input
too. `candidatesTokenCount` excludes thoughts, which are billed as output. In
streams every chunk's `usageMetadata` is a running snapshot: the last one wins.
"""

from __future__ import annotations

from typing import Any

from .base import StreamParser, loads
from .model import Usage, add, count_or_zero, error_text, garbled, text


def generate_usage(meta: Any) -> Usage:
    """Map `usageMetadata`; proto3 omits zero counts, so absent means 0 once it is present."""
    if not isinstance(meta, dict):
        return Usage()
    thoughts = count_or_zero(meta, "thoughtsTokenCount")
    input_tokens = add(count_or_zero(meta, "promptTokenCount"), count_or_zero(meta, "toolUsePromptTokenCount"))
    return Usage(
        input_tokens=None if garbled(meta, "cachedContentTokenCount") else input_tokens,
        output_tokens=add(count_or_zero(meta, "candidatesTokenCount"), thoughts),
        cached_tokens=count_or_zero(meta, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def response_model(obj: Any) -> str | None:
    return text(obj.get("modelVersion")) if isinstance(obj, dict) else None


class GenerateStream(StreamParser):
    """SSE `data:` chunks (alt=sse) or the objects of a streamed JSON array."""

    def on_event(self, name: str | None, data: str) -> bool:
        obj = self.loads(data)
        self.on_object(obj, len(data))
        return True

    def on_object(self, obj: Any, size: int) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.error = error_text(obj)
        if "usageMetadata" in obj:
            self.usage = generate_usage(obj["usageMetadata"])
        candidates = obj.get("candidates")
        if isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates):
            self.complete = True  # Gemini has no end marker: the chunk with a finish reason is the last
        self.response_model = response_model(obj) or self.response_model
        self.keep_event(None, obj, size)
