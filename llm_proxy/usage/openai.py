"""OpenAI usage: chat/completions, legacy completions, embeddings, Responses.

Cached and cache-write tokens are subsets of prompt/input tokens and reasoning
is a subset of completion/output tokens, which is already our contract's
meaning, so the counts map one to one.
"""

from __future__ import annotations

from typing import Any

from .base import StreamParser, append_text, event_index, loads
from .model import Usage, count, detail, error_text, garbled, text, tier_name


_CACHE_PARTS = ("cached_tokens", "cache_write_tokens")


def chat_usage(u: Any, *, embeddings: bool = False) -> Usage:
    """Usage of chat/completions, completions and embeddings (`CompletionUsage`)."""
    if not isinstance(u, dict):
        return Usage()
    output = count(u, "completion_tokens")
    if embeddings and u.get("completion_tokens") is None and count(u, "prompt_tokens") is not None:
        output = 0  # embeddings produce no output tokens; 0 is known, not unknown
    parts_garbled = any(garbled(u, "prompt_tokens_details", f) for f in _CACHE_PARTS)
    return Usage(
        input_tokens=None if parts_garbled else count(u, "prompt_tokens"),
        output_tokens=output,
        cached_tokens=detail(u, "prompt_tokens_details", "cached_tokens"),
        cache_write_tokens=detail(u, "prompt_tokens_details", "cache_write_tokens"),
        reasoning_tokens=detail(u, "completion_tokens_details", "reasoning_tokens"),
    )


def responses_usage(u: Any) -> Usage:
    """Usage of the Responses API (`ResponseUsage`)."""
    if not isinstance(u, dict):
        return Usage()
    parts_garbled = any(garbled(u, "input_tokens_details", f) for f in _CACHE_PARTS)
    return Usage(
        input_tokens=None if parts_garbled else count(u, "input_tokens"),
        output_tokens=count(u, "output_tokens"),
        cached_tokens=detail(u, "input_tokens_details", "cached_tokens"),
        cache_write_tokens=detail(u, "input_tokens_details", "cache_write_tokens"),
        reasoning_tokens=detail(u, "output_tokens_details", "reasoning_tokens"),
    )


def _append_delta(target: dict[str, Any], delta: dict[str, Any]) -> None:
    """Fold one chat delta into the message being rebuilt.

    String fields (content, refusal, and vendor extras such as DeepSeek's
    reasoning_content) concatenate; tool calls merge by their index.
    """
    for key, value in delta.items():
        if key == "tool_calls" and isinstance(value, list):
            calls = target.get("tool_calls")
            if not isinstance(calls, dict):  # by index while rebuilding; a list only in body()
                calls = target["tool_calls"] = {}
            for call in value:
                if not isinstance(call, dict):
                    continue
                slot = calls.setdefault(event_index(call, len(calls)), {"function": {"arguments": ""}})
                for field in ("id", "type"):
                    if call.get(field):
                        slot[field] = call[field]
                function = call.get("function")
                if not isinstance(function, dict):
                    continue
                if function.get("name"):
                    slot["function"]["name"] = function["name"]
                append_text(slot["function"], "arguments", function.get("arguments"))
        elif isinstance(value, str):
            if key == "role":
                target[key] = value
            else:
                append_text(target, key, value)
        elif value is not None and key not in target:
            target[key] = value


class ChatStream(StreamParser):
    """`data:` chunks of chat/completions or legacy completions, ending in `[DONE]`.

    With `strip_usage_chunk` (the proxy injected `include_usage`), the usage-only
    chunk is metered but not passed on, so the client sees the stream it asked for.
    """

    def __init__(self, *, strip_usage_chunk: bool = False, legacy: bool = False) -> None:
        super().__init__()
        self.strip_usage_chunk = strip_usage_chunk
        self.legacy = legacy
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage_obj: Any = None
        self._model_seen: str | None = None

    def on_event(self, name: str | None, data: str) -> bool:
        if data.startswith("[DONE]"):
            self.complete = True
            return True
        chunk = self.loads(data)
        if not isinstance(chunk, dict):
            return True
        if chunk.get("error"):
            self.error = error_text(chunk)
            return True
        if not self._head:
            self._head = {k: chunk[k] for k in ("id", "created", "system_fingerprint") if k in chunk}
        model = chunk.get("model")
        if isinstance(model, str) and model != self._model_seen:  # the same name on every chunk: once
            self._model_seen = model
            self.response_model = text(model)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self._usage_obj = usage
            self.usage = chat_usage(usage)
            self.usage.service_tier = tier_name(chunk.get("service_tier"))
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._fold_choice(choice)
        return not (self.strip_usage_chunk and usage and choices == [])

    def drops(self, name: str | None, data: str) -> bool:
        """Whether `on_event` would hide this event from the client, without its side effects
        (the lazy meter asks before the stream's events are parsed at its end)."""
        if not self.strip_usage_chunk or data.startswith("[DONE]"):
            return False
        chunk = loads(data)
        return (isinstance(chunk, dict) and not chunk.get("error") and bool(chunk.get("usage"))
                and chunk.get("choices") == [])

    def _fold_choice(self, choice: dict[str, Any]) -> None:
        index = event_index(choice, 0)
        slot = self._choices.get(index)
        if slot is None:
            slot = self._choices[index] = {"index": index, "message": {}, "finish_reason": None}
        if self.legacy:
            slot["message"].setdefault("text", "")
            append_text(slot["message"], "text", choice.get("text"))
        else:
            delta = choice.get("delta")
            if type(delta) is dict and len(delta) == 1 and type(delta.get("content")) is str:
                # nearly every chunk: one piece of text (what _append_delta does with it, inline)
                message = slot["message"]
                previous = message.get("content")
                message["content"] = (previous if isinstance(previous, str) else "") + delta["content"]
            elif isinstance(delta, dict):
                _append_delta(slot["message"], delta)
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]

    def body(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            slot = self._choices[index]
            message = dict(slot["message"])
            if isinstance(message.get("tool_calls"), dict):
                message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
            if self.legacy:
                choices.append({"index": index, "text": message.get("text", ""), "finish_reason": slot["finish_reason"]})
            else:
                choices.append({"index": index, "message": message, "finish_reason": slot["finish_reason"]})
        return {
            **self._head,
            "object": "text_completion" if self.legacy else "chat.completion",
            "model": self.response_model,
            "choices": choices,
            "usage": self._usage_obj,
        }


_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class ResponsesStream(StreamParser):
    """Responses API SSE: usage comes once, in the terminal event's `response`."""

    def __init__(self) -> None:
        super().__init__()
        self._final: Any = None

    def on_event(self, name: str | None, data: str) -> bool:
        obj = self.loads(data)
        if isinstance(obj, dict):
            self.on_object(name, obj, len(data))
        return True

    def on_object(self, name: str | None, obj: dict[str, Any], size: int) -> None:
        """One event already parsed (the WebSocket meter parses each message once, to pair it)."""
        kind = obj.get("type") or name
        response = obj.get("response")
        if isinstance(response, dict) and isinstance(response.get("model"), str):
            self.response_model = text(response["model"])
        if kind in _TERMINAL and isinstance(response, dict):
            self._final = response
            self.complete = True
            self.usage = responses_usage(response.get("usage"))
            self.usage.service_tier = tier_name(response.get("service_tier"))
            if kind == "response.failed":
                self.error = error_text(response) or "response.failed"
        elif kind == "error":
            self.error = error_text(obj)
        else:
            self.keep_event(name, obj, size)

    def body(self) -> Any:
        return self._final if self._final is not None else self.events_body()
