"""Ollama native API usage (/api/chat, /api/generate, /api/embed).

Counts come only on the final `done: true` object. The metric fields are
`omitempty`, so on that object an absent count means 0; a stream cut before it
leaves the usage unknown.
"""

from __future__ import annotations

from typing import Any

from .base import StreamParser, loads
from .model import Usage, count_or_zero, error_text, text


def native_usage(obj: Any) -> Usage:
    if not isinstance(obj, dict):
        return Usage()
    return Usage(
        input_tokens=count_or_zero(obj, "prompt_eval_count"),
        output_tokens=count_or_zero(obj, "eval_count"),
    )


class NativeStream(StreamParser):
    """NDJSON lines; usage from the `done: true` line, errors from `{"error": ...}` lines."""

    def on_event(self, name: str | None, data: str) -> bool:
        obj = self.loads(data)
        if not isinstance(obj, dict):
            return True
        if obj.get("error"):
            self.error = error_text(obj)
        if isinstance(obj.get("model"), str):
            self.response_model = text(obj["model"])
        if obj.get("done") is True:
            self.complete = True
            self.usage = native_usage(obj)
        self.keep_event(None, obj, len(data))
        return True
