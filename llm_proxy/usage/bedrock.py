"""AWS Bedrock runtime usage: Converse / ConverseStream, and InvokeModel(WithResponseStream).

Converse reports `usage` {inputTokens, outputTokens, totalTokens,
cacheReadInputTokens, cacheWriteInputTokens, cacheDetails}. As with
Anthropic, `inputTokens` leaves the cache reads and writes out (totalTokens
is all four together), so the contract's input is their sum. ConverseStream
sends the same object in its last event, `metadata`.

InvokeModel speaks the model's own body. For Anthropic models that is the
Messages API (JSON, or in the stream a `chunk` event whose payload is
`{"bytes": base64 of one Messages stream event}`). Whatever the model, Bedrock
adds `amazon-bedrock-invocationMetrics` {inputTokenCount, outputTokenCount}
to the last streamed chunk: the counts when the body's own are not ones we read.

Bedrock bills the model id of the path (a `global.` profile costs less than a
regional one), and the `model` inside an Anthropic body is only Anthropic's
name, so no parser here reports a response model: the row is priced by the
model it asked for.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from . import anthropic
from .base import StreamParser, event_index, loads
from .model import Usage, add, count, count_or_zero, error_text, text


def converse_usage(u: Any) -> Usage:
    """Map a Converse `usage` (TokenUsage) onto the contract."""
    if not isinstance(u, dict):
        return Usage()
    raw_input = count(u, "inputTokens")
    reads = count_or_zero(u, "cacheReadInputTokens")
    writes = count_or_zero(u, "cacheWriteInputTokens")
    return Usage(
        input_tokens=add(raw_input, reads, writes),
        output_tokens=count(u, "outputTokens"),
        cached_tokens=reads,
        cache_write_tokens=writes,
        cache_write_1h_tokens=_writes_1h(u.get("cacheDetails")) if writes else None,
    )


def _writes_1h(details: Any) -> int | None:
    """Cache writes with the one-hour TTL, from `cacheDetails` [{ttl, inputTokens}]; 0 when none."""
    if not isinstance(details, list):
        return None
    total = 0
    for item in details:
        if isinstance(item, dict) and item.get("ttl") == "1h":
            tokens = count(item, "inputTokens")
            if tokens is None:
                return None
            total += tokens
    return total


def invocation_usage(metrics: Any) -> Usage:
    """`amazon-bedrock-invocationMetrics` (any model): input and output counts, cache where given."""
    if not isinstance(metrics, dict):
        return Usage()
    reads = count_or_zero(metrics, "cacheReadInputTokenCount")
    writes = count_or_zero(metrics, "cacheWriteInputTokenCount")
    return Usage(
        input_tokens=add(count(metrics, "inputTokenCount"), reads, writes),
        output_tokens=count(metrics, "outputTokenCount"),
        cached_tokens=reads,
        cache_write_tokens=writes,
    )


def invoke_usage(body: Any) -> Usage:
    """A non-streamed InvokeModel body: Anthropic Messages, Nova (`usage` as Converse), Llama."""
    if not isinstance(body, dict):
        return Usage()
    usage = body.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:
        return anthropic.messages_usage(usage)
    if isinstance(usage, dict) and "inputTokens" in usage:
        return converse_usage(usage)
    if "prompt_token_count" in body:  # Meta Llama
        return Usage(input_tokens=count(body, "prompt_token_count"), output_tokens=count(body, "generation_token_count"))
    return invocation_usage(body.get("amazon-bedrock-invocationMetrics"))


def header_usage(headers: Mapping[str, str]) -> Usage:
    """InvokeModel's `X-Amzn-Bedrock-Input-Token-Count` / `-Output-Token-Count` response headers,
    sent for every model: the counts of a body whose own usage we do not read (Titan, Cohere)."""
    def header_count(name: str) -> int | None:
        value = headers.get(name)
        return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None
    return Usage(input_tokens=header_count("x-amzn-bedrock-input-token-count"),
                 output_tokens=header_count("x-amzn-bedrock-output-token-count"))


class ConverseStream(StreamParser):
    """ConverseStream events: rebuilds the Converse response (message, stop reason, usage, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self._role: str | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._tool_input: dict[int, str] = {}
        self._stop: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}

    def on_event(self, name: str | None, data: str) -> bool:
        obj = loads(data)
        if name is not None and name.startswith(("exception:", "error:")):
            message = error_text(obj) or (obj.get("message") if isinstance(obj, dict) else None) or data
            self.error = text(f"{name.partition(':')[2] or name}: {message}"[:1000])
            return True
        if not isinstance(obj, dict):
            return True
        if name == "messageStart":
            self._role = text(obj.get("role"))
        elif name == "contentBlockStart":
            start = obj.get("start")
            self._blocks[event_index(_indexed(obj), len(self._blocks))] = dict(start) if isinstance(start, dict) else {}
        elif name == "contentBlockDelta" and isinstance(obj.get("delta"), dict):
            self._apply_delta(event_index(_indexed(obj), 0), obj["delta"])
        elif name == "messageStop":
            self._stop = obj
        elif name == "metadata":
            self._metadata = obj
            self.usage = converse_usage(obj.get("usage"))
            self.complete = True  # the last event of a ConverseStream
        return True

    def _apply_delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {})
        if isinstance(delta.get("text"), str):
            block["text"] = (block.get("text") if isinstance(block.get("text"), str) else "") + delta["text"]
        tool = delta.get("toolUse")
        if isinstance(tool, dict) and isinstance(tool.get("input"), str):
            self._tool_input[index] = self._tool_input.get(index, "") + tool["input"]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            kept = block.setdefault("reasoningContent", {"reasoningText": {"text": ""}})
            if isinstance(kept, dict) and isinstance(kept.get("reasoningText"), dict):
                kept["reasoningText"]["text"] = str(kept["reasoningText"].get("text", "")) + reasoning["text"]

    def body(self) -> dict[str, Any]:
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if index in self._tool_input:
                tool = block.get("toolUse") if isinstance(block.get("toolUse"), dict) else {}
                block = {**block, "toolUse": {**tool, "input": _json_or_text(self._tool_input[index])}}
            content.append(block)
        body: dict[str, Any] = {"output": {"message": {"role": self._role or "assistant", "content": content}}}
        if "stopReason" in self._stop:
            body["stopReason"] = self._stop["stopReason"]
        for key in ("usage", "metrics"):
            if key in self._metadata:
                body[key] = self._metadata[key]
        return body


def _indexed(obj: dict[str, Any]) -> dict[str, Any]:
    """Converse names its block index `contentBlockIndex`; event_index reads `index`."""
    return {"index": obj.get("contentBlockIndex")}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value) if value else {}
    except (ValueError, RecursionError):
        return value


class InvokeStream(anthropic.MessagesStream):
    """InvokeModelWithResponseStream: `chunk` events wrapping the model's own stream events.

    For Anthropic models each chunk's bytes are one Messages stream event; the
    Messages parser reads them. For others, the invocation metrics of the last
    chunk give the counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self._metrics = Usage()
        self._other: list[Any] = []

    def on_event(self, name: str | None, data: str) -> bool:
        if name is not None and name.startswith(("exception:", "error:")):
            obj = loads(data)
            message = (obj.get("message") if isinstance(obj, dict) else None) or data
            self.error = text(f"{name.partition(':')[2] or name}: {message}"[:1000])
            return True
        obj = loads(data)
        inner = _chunk_bytes(obj)
        if inner is None:
            return True
        event = loads(inner)
        if isinstance(event, dict):
            metrics = event.get("amazon-bedrock-invocationMetrics")
            if metrics is not None:
                self._metrics = invocation_usage(metrics)
                self.complete = True  # Bedrock adds them to the last chunk, whatever the model
            if isinstance(event.get("type"), str):
                super().on_event(None, inner)
                self.response_model = None  # priced by the path's model id (see the module's docstring)
            else:
                self.keep_event(None, event, len(inner))
        if not self.usage.known and self._metrics.known:
            self.usage = self._metrics
        return True

    def body(self) -> dict[str, Any]:
        if self._message or self._blocks:
            return super().body()
        return self.events_body()


def _chunk_bytes(obj: Any) -> str | None:
    """The decoded `bytes` of a PayloadPart, or None when it is not valid base64 of UTF-8 text."""
    if not isinstance(obj, dict) or not isinstance(obj.get("bytes"), str):
        return None
    try:
        return base64.b64decode(obj["bytes"], validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
