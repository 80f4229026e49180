"""Gemini generateContent / streamGenerateContent usage.

`promptTokenCount` includes cached content; tool-use prompt tokens are input
too. `candidatesTokenCount` excludes thoughts, which are billed as output. In
streams every chunk's `usageMetadata` is a running snapshot: the last one wins.
"""

from __future__ import annotations

from typing import Any

from .base import StreamParser, loads
from .model import Usage, count, error_text


def generate_usage(meta: Any) -> Usage:
    """Map `usageMetadata`; proto3 omits zero counts, so absent means 0 once it is present."""
    if not isinstance(meta, dict):
        return Usage()
    thoughts = count(meta, "thoughtsTokenCount") or 0
    return Usage(
        input_tokens=(count(meta, "promptTokenCount") or 0) + (count(meta, "toolUsePromptTokenCount") or 0),
        output_tokens=(count(meta, "candidatesTokenCount") or 0) + thoughts,
        cached_tokens=count(meta, "cachedContentTokenCount") or 0,
        reasoning_tokens=thoughts,
    )


def response_model(obj: Any) -> str | None:
    model = obj.get("modelVersion") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None


class GenerateStream(StreamParser):
    """SSE `data:` chunks (alt=sse) or the objects of a streamed JSON array."""

    def on_event(self, name: str | None, data: str) -> bool:
        obj = loads(data)
        self.on_object(obj, len(data))
        return True

    def on_object(self, obj: Any, size: int) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.error = error_text(obj)
        if "usageMetadata" in obj:
            self.usage = generate_usage(obj["usageMetadata"])
        self.response_model = response_model(obj) or self.response_model
        self.keep_event(None, obj, size)
