"""Response bodies, usage, stop reasons and errors: Anthropic Messages <-> OpenAI chat.

Usage keeps each API's own meaning: Anthropic's `input_tokens` excludes cache
reads and writes while OpenAI's `prompt_tokens` includes them (cached and
cache-write tokens are subsets), so prompt = input + reads + writes one way
and input = prompt - cached - writes the other. A metering parser reading the
translated body therefore counts exactly what the provider reported.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any

from ..errors import ANTHROPIC_TYPES, OPENAI_TYPES
from .content import parse_arguments, texts, tool_call, tool_id

_FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
_STOP_REASONS = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}

_ANTHROPIC_STATUS = {kind: status for status, kind in ANTHROPIC_TYPES.items()}  # 529, 504 win


def finish_reason(stop_reason: Any) -> str:
    """Anthropic stop_reason -> OpenAI finish_reason (`pause_turn` has no OpenAI twin: "stop")."""
    return _FINISH_REASONS.get(stop_reason, "stop")


def stop_reason(finish: Any, *, used_tools: bool = False) -> str:
    """OpenAI finish_reason -> Anthropic stop_reason.

    Some OpenAI-compatible servers end a tool-calling turn with "stop"; an
    Anthropic client only runs tools on "tool_use", so tool calls win.
    """
    mapped = _STOP_REASONS.get(finish, "end_turn")
    return "tool_use" if used_tools and mapped == "end_turn" else mapped


def _int(obj: Any, *path: str) -> int:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, int) and not isinstance(obj, bool) else 0


def chat_usage(u: Any) -> dict[str, Any]:
    """An Anthropic usage object as OpenAI `CompletionUsage`."""
    reads = _int(u, "cache_read_input_tokens")
    writes = _int(u, "cache_creation_input_tokens")
    prompt = _int(u, "input_tokens") + reads + writes
    completion = _int(u, "output_tokens")
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
    }
    if isinstance(u, dict) and isinstance(u.get("output_tokens_details"), dict):
        usage["completion_tokens_details"] = {"reasoning_tokens": _int(u, "output_tokens_details", "thinking_tokens")}
    return usage


def messages_usage(u: Any) -> dict[str, Any]:
    """An OpenAI `CompletionUsage` as Anthropic usage (input never negative)."""
    cached = _int(u, "prompt_tokens_details", "cached_tokens")
    writes = _int(u, "prompt_tokens_details", "cache_write_tokens")
    usage: dict[str, Any] = {
        "input_tokens": max(_int(u, "prompt_tokens") - cached - writes, 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": writes,
        "output_tokens": _int(u, "completion_tokens"),
    }
    details = u.get("completion_tokens_details") if isinstance(u, dict) else None
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        usage["output_tokens_details"] = {"thinking_tokens": details["reasoning_tokens"]}
    return usage


def messages_to_chat_response(body: dict) -> dict:
    """An Anthropic Message as an OpenAI ChatCompletion (thinking blocks dropped)."""
    blocks = [b for b in body.get("content") or [] if isinstance(b, dict)]
    text = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    calls = [tool_call(b) for b in blocks if b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{body.get('id') or ''}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(body.get("stop_reason"))}],
        "usage": chat_usage(body.get("usage")),
    }


def chat_to_messages_response(body: dict) -> dict:
    """An OpenAI ChatCompletion (first choice) as an Anthropic Message.

    A refusal with no content becomes the text, so the client sees why it got
    nothing; reasoning text some compatible servers add has no signed
    Anthropic form and is dropped.
    """
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = texts(message.get("content"), sep="") or (message.get("refusal") or "")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            content.append({"type": "tool_use", "id": tool_id(call.get("id")), "name": function.get("name") or "",
                            "input": parse_arguments(function.get("arguments"))})
    used_tools = any(b["type"] == "tool_use" for b in content)
    return {
        "id": f"msg_{body.get('id') or ''}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "",
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), used_tools=used_tools),
        "stop_sequence": None,
        "usage": messages_usage(body.get("usage")),
    }


# --- errors -------------------------------------------------------------------------


def error_message(body: Any, status: int) -> str:
    """The human message of any provider's error body, else the HTTP reason phrase.

    Covers OpenAI/Anthropic/Gemini (`error.message`), Ollama (`error` string)
    and bare `message`/`detail` bodies from gateways.
    """
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            return error["message"]
        if isinstance(error, str) and error:
            return error
        for key in ("message", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def anthropic_status(body: Any) -> int:
    """The HTTP status an Anthropic error type stands for (in-stream errors come after a 200)."""
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return _ANTHROPIC_STATUS.get(kind, 500)


def openai_status(body: Any) -> int:
    """A best guess at the status of an OpenAI in-stream error (it arrives after a 200)."""
    error = body.get("error") if isinstance(body, dict) else None
    words = " ".join(str(error.get(k) or "") for k in ("type", "code")) if isinstance(error, dict) else ""
    if "rate_limit" in words or "insufficient_quota" in words:
        return 429
    if "invalid_request" in words:
        return 400
    return 500


def error_to_chat(body: dict | None, status: int) -> dict:
    """Any provider's error body in OpenAI's shape (`type` chosen by status).

    An OpenAI-shaped body passes through with its own type, param and code.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str) and body.get("type") != "error":
        return {"error": {"message": error_message(body, status), "type": error["type"],
                          "param": error.get("param"), "code": error.get("code")}}
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": error_message(body, status), "type": kind, "param": None, "code": None}}


def error_to_messages(body: dict | None, status: int) -> dict:
    """Any provider's error body in Anthropic's shape (`error.type` chosen by status).

    An Anthropic-shaped body keeps its own error type.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, dict) and body.get("type") == "error" and isinstance(error, dict) and error.get("type"):
        kind = error["type"]
    else:
        kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error_message(body, status)}}
