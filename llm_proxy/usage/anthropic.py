"""Anthropic Messages usage, JSON and streamed.

Anthropic's `input_tokens` excludes cache reads and writes, so the contract's
input is the sum of the three. In streams, `message_start` carries input and
cache counts and `message_delta` carries cumulative values that overwrite them
(server-side tools can raise input by orders of magnitude): last value wins,
never add.
"""

from __future__ import annotations

import json
from typing import Any

from .base import StreamParser, append_text, event_index, loads
from .model import Usage, add, count, count_or_zero, error_text, text, tier_name

_COUNTED = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def messages_usage(u: Any) -> Usage:
    """Map an Anthropic usage object onto the contract's semantics."""
    if not isinstance(u, dict):
        return Usage()
    raw_input = count(u, "input_tokens")
    if raw_input is None:
        # Without input_tokens the cache counts have nothing to be part of.
        reads = writes = writes_1h = None
    else:
        # Cache fields are absent from older responses: absent is 0, garbage is unknown.
        reads = count_or_zero(u, "cache_read_input_tokens")
        writes = count_or_zero(u, "cache_creation_input_tokens")
        writes_1h = count_or_zero(u.get("cache_creation"), "ephemeral_1h_input_tokens")
    return Usage(
        input_tokens=add(raw_input, reads, writes),
        output_tokens=count(u, "output_tokens"),
        cached_tokens=reads,
        cache_write_tokens=writes,
        cache_write_1h_tokens=writes_1h,
        reasoning_tokens=count(u, "output_tokens_details", "thinking_tokens"),
        service_tier=tier_name(u.get("service_tier")),
        web_search_requests=count(u, "server_tool_use", "web_search_requests"),
    )


def merge_usage(current: dict[str, Any], update: Any) -> None:
    """Overwrite `current` with every non-null field of a cumulative `message_delta.usage`."""
    if not isinstance(update, dict):
        return
    for key, value in update.items():
        if value is not None:
            current[key] = value


class MessagesStream(StreamParser):
    """Messages SSE: rebuilds the final message (content blocks, stop reason, usage)."""

    def __init__(self) -> None:
        super().__init__()
        self._message: dict[str, Any] = {}
        self._usage_obj: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, str] = {}

    def on_event(self, name: str | None, data: str) -> bool:
        obj = self.loads(data)
        if not isinstance(obj, dict):
            return True
        kind = obj.get("type") or name
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            self._message = {k: v for k, v in obj["message"].items() if k not in ("content", "usage")}
            self.response_model = text(self._message.get("model"))
            usage = obj["message"].get("usage")
            self._usage_obj = dict(usage) if isinstance(usage, dict) else {}
            self.usage = messages_usage(self._usage_obj)
        elif kind == "message_delta":
            merge_usage(self._usage_obj, obj.get("usage"))
            self.usage = messages_usage(self._usage_obj)
            if isinstance(obj.get("delta"), dict):
                self._message.update(obj["delta"])
        elif kind == "content_block_start" and isinstance(obj.get("content_block"), dict):
            self._blocks[event_index(obj, len(self._blocks))] = dict(obj["content_block"])
        elif kind == "content_block_delta" and isinstance(obj.get("delta"), dict):
            self._apply_delta(event_index(obj, 0), obj["delta"])
        elif kind == "content_block_stop":
            self._close_block(event_index(obj, 0))
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            self.error = error_text(obj)
        return True

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            self._partial_json[index] = self._partial_json.get(index, "") + (piece if isinstance(piece, str) else "")
        elif kind == "citations_delta":
            citations = block.get("citations")
            if not isinstance(citations, list):
                citations = block["citations"] = []
            citations.append(delta.get("citation"))
        else:
            for key in ("text", "thinking", "signature"):
                append_text(block, key, delta.get(key))

    def _close_block(self, index: int) -> None:
        partial = self._partial_json.pop(index, None)
        if partial is None or index not in self._blocks:
            return
        try:
            self._blocks[index]["input"] = json.loads(partial) if partial else {}
        except (ValueError, RecursionError):  # not JSON (or too deep to be): kept as the text sent
            self._blocks[index]["input"] = partial

    def finish(self) -> None:
        for index in list(self._partial_json):
            self._close_block(index)

    def body(self) -> dict[str, Any]:
        content = [self._blocks[i] for i in sorted(self._blocks)]
        return {**self._message, "content": content, "usage": self._usage_obj or None}
