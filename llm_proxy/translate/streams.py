"""Streamed replies: Anthropic Messages SSE <-> OpenAI chat SSE, event by event.

Both translators take events already decoded from SSE (name and parsed JSON)
and return the bytes to send on, so the caller can flush each one as it
comes and time to first token survives the translation. They keep only what
the end of the stream needs: ids, the stop reason, usage and which blocks or
tool calls are open.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .content import tool_id
from .responses import (
    anthropic_status, chat_usage, error_to_chat, error_to_messages, finish_reason, messages_usage,
    openai_status, stop_reason,
)


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class MessagesToChatStream:
    """Anthropic stream events in, OpenAI `chat.completion.chunk` frames out.

    Usage follows the Anthropic rule: `message_start` gives input and cache
    counts and each `message_delta` overwrites with cumulative values, never
    adds. With `include_usage` every chunk carries `"usage": null` and the
    totals come in one extra `choices: []` chunk just before `[DONE]`, as
    OpenAI sends them.
    """

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self._id = "chatcmpl-"
        self._model = ""
        self._created = int(time.time())
        self._started = False
        self._finished = False  # the chunk with finish_reason went out
        self._failed = False
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model, "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return f"data: {_json(chunk)}\n\n".encode()

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def _start(self, message: dict[str, Any]) -> bytes:
        """The role chunk; also sent, without ids, if content somehow comes first."""
        if self._started:
            return b""
        self._started = True
        if message.get("id"):
            self._id = f"chatcmpl-{message['id']}"
        self._model = message.get("model") or ""
        if isinstance(message.get("usage"), dict):
            self._usage = dict(message["usage"])
        return self._delta({"role": "assistant", "content": ""})

    def feed(self, event: str | None, data: dict) -> bytes:
        """One Anthropic event as zero or more OpenAI chunks (ping and thinking give none)."""
        if self._failed or not isinstance(data, dict):
            return b""
        kind = data.get("type") or event
        if kind == "message_start":
            return self._start(data.get("message") if isinstance(data.get("message"), dict) else {})
        if kind == "error":
            self._failed = True
            return f"data: {_json(error_to_chat(data, anthropic_status(data)))}\n\n".encode()
        if kind not in ("content_block_start", "content_block_delta", "message_delta", "message_stop"):
            return b""  # ping, and event kinds newer than this code
        out = self._start({})
        if kind == "content_block_start":
            out += self._block_start(data.get("index", 0), data.get("content_block") or {})
        elif kind == "content_block_delta":
            out += self._block_delta(data.get("index", 0), data.get("delta") or {})
        elif kind == "message_delta":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            for key, value in usage.items():
                if value is not None:
                    self._usage[key] = value  # cumulative: overwrite, never add
        elif kind == "message_stop":
            out += self._finish_chunk()
        return out

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        if block.get("type") == "text" and block.get("text"):
            return self._delta({"content": block["text"]})
        if block.get("type") != "tool_use":
            return b""  # thinking, redacted thinking and server-tool blocks stay at Anthropic
        position = self._tools[index] = len(self._tools)
        arguments = _json(block["input"]) if block.get("input") else ""
        call = {"index": position, "id": block.get("id") or "", "type": "function",
                "function": {"name": block.get("name") or "", "arguments": arguments}}
        return self._delta({"tool_calls": [call]})

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return self._delta({"content": delta["text"]})
        if delta.get("type") == "input_json_delta" and index in self._tools and delta.get("partial_json"):
            call = {"index": self._tools[index], "function": {"arguments": delta["partial_json"]}}
            return self._delta({"tool_calls": [call]})
        return b""

    def _finish_chunk(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return self._delta({}, finish_reason(self._stop_reason))

    def finish(self) -> bytes:
        """The usage chunk (if asked for) and `[DONE]`.

        A stream cut before `message_stop` still gets its finish chunk if a
        `message_delta` told the stop reason; without one, no reason is made
        up, so the client can tell the reply is incomplete. After an error
        only `[DONE]` follows.
        """
        out = b""
        if self._started and not self._failed:
            if self._stop_reason is not None:
                out += self._finish_chunk()
            if self.include_usage:
                out += self._chunk([], chat_usage(self._usage))
        return out + b"data: [DONE]\n\n"


class ChatToMessagesStream:
    """OpenAI chat chunks in, Anthropic SSE frames out.

    OpenAI sends usage only at the end (with `include_usage`), after the
    point where Anthropic's `message_start` is due, so `message_start` holds a
    zero placeholder and the real counts, input and cache included, go in
    `message_delta.usage`, whose optional input/cache fields Anthropic's SDKs
    and our meter take as cumulative overwrites. Only choice 0 is used; a
    `refusal` delta is streamed as text, as Anthropic has no refusal channel.
    """

    def __init__(self) -> None:
        self._started = False
        self._closed = False  # message_stop sent, or an error ended the stream
        self._id = ""
        self._blocks = 0  # content blocks started so far
        self._open: int | None = None  # the block receiving deltas
        self._text = False  # the open block is text
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish: str | None = None
        self._usage: Any = None

    @staticmethod
    def _frame(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {_json({'type': name, **data})}\n\n".encode()

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        self._id = f"msg_{chunk.get('id') or ''}"
        usage = messages_usage(chunk["usage"]) if chunk.get("usage") else {"input_tokens": 0, "output_tokens": 0}
        message = {"id": self._id, "type": "message", "role": "assistant", "model": chunk.get("model") or "",
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        return self._frame("message_start", {"message": message})

    def feed(self, event: str | None, data: dict | str) -> bytes:
        """One OpenAI chunk (or the string "[DONE]") as zero or more Anthropic frames."""
        if self._closed:
            return b""
        if isinstance(data, str):
            return self.finish() if data.strip() == "[DONE]" else b""
        if not isinstance(data, dict):
            return b""
        if data.get("error"):
            self._closed = True
            return self._frame("error", {"error": error_to_messages(data, openai_status(data))["error"]})
        out = b"" if self._started else self._start(data)
        if data.get("usage"):
            self._usage = data["usage"]
        choices = data.get("choices") if isinstance(data.get("choices"), list) else []
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return out
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            out += self._text_delta(text)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool_delta(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _open_block(self, block: dict[str, Any], *, text: bool) -> tuple[bytes, int]:
        """Close the open block (Anthropic streams one block at a time) and start another."""
        out = self._close_block()
        index = self._open = self._blocks
        self._blocks += 1
        self._text = text
        return out + self._frame("content_block_start", {"index": index, "content_block": block}), index

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return self._frame("content_block_stop", {"index": index})

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._open is None or not self._text:
            out, _ = self._open_block({"type": "text", "text": ""}, text=True)
        delta = {"type": "text_delta", "text": text}
        return out + self._frame("content_block_delta", {"index": self._open, "delta": delta})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        """A new tool index starts a tool_use block; argument pieces go to that index's block.

        A piece for an older, already closed call (no known server interleaves
        calls) still goes to its own block index, which SDK accumulators allow.
        """
        out = b""
        position = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        if position not in self._tools:
            ident = tool_id(call.get("id") or f"toolu_{self._id}_{position}")
            block = {"type": "tool_use", "id": ident, "name": function.get("name") or "", "input": {}}
            out, self._tools[position] = self._open_block(block, text=False)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += self._frame("content_block_delta", {"index": self._tools[position], "delta": delta})
        return out

    def finish(self) -> bytes:
        """Close the open block, then `message_delta` (stop reason, usage) and `message_stop`.

        Nothing if no chunk ever came (there is no message to end) or after an error.
        """
        if self._closed or not self._started:
            return b""
        self._closed = True
        usage = messages_usage(self._usage) if self._usage else {"output_tokens": 0}
        delta = {"stop_reason": stop_reason(self._finish, used_tools=bool(self._tools)), "stop_sequence": None}
        return (self._close_block() + self._frame("message_delta", {"delta": delta, "usage": usage})
                + self._frame("message_stop", {}))
