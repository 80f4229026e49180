"""Request bodies: OpenAI Chat Completions <-> Anthropic Messages.

Both directions copy only the fields they know (an allow-list): a field one
API does not have would make the other answer 400, so anything unlisted is
dropped on purpose. Notable drops, chat -> messages: `n` (Anthropic has one
candidate), `logprobs`/`top_logprobs`, `seed`, `logit_bias`, penalties,
`response_format` (Anthropic's structured output is a different, model-gated
feature; a JSON-mode request is served as plain text), `reasoning_effort`,
`service_tier`, `store`, `metadata`, audio and prediction options, and
`strict` on tools (schema rules differ). Messages -> chat drops `top_k`,
`thinking` (and thinking blocks), `service_tier` and server tools, which run
on Anthropic's side and have no client-side equivalent.
"""

from __future__ import annotations

from typing import Any

from .content import (
    chat_parts_to_blocks, image_part, parse_arguments, parts_content, texts, tool_call, tool_id, user_part,
)

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI lets the model decide
_OPENAI_MAX_STOPS = 4  # OpenAI rejects more; the first four still stop most runs where asked


def _first_number(body: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


# --- chat -> messages ---------------------------------------------------------------


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = chat_parts_to_blocks(message.get("content"))
    if not blocks and isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks = [{"type": "text", "text": message["refusal"]}]
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        function = call["function"]
        blocks.append({
            "type": "tool_use",
            "id": tool_id(call.get("id")),
            "name": function.get("name") or "",
            "input": parse_arguments(function.get("arguments")),
        })
    return blocks


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        result: Any = [{"type": "text", "text": t} for t in
                       (p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text") if t]
    else:
        result = content if isinstance(content, str) else ""
    return {"type": "tool_result", "tool_use_id": tool_id(message.get("tool_call_id")), "content": result}


def _merge_turns(turns: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Merge consecutive same-role turns (Anthropic requires alternation).

    In a user turn the tool_result blocks go first, as Anthropic requires them
    to open the turn that follows the tool_use. A lone text block is sent as a
    plain string, the shorter equivalent form.
    """
    merged: list[tuple[str, list[dict[str, Any]]]] = []
    for role, blocks in turns:
        if not blocks:
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, list(blocks)))
    out = []
    for role, blocks in merged:
        if role == "user":
            blocks.sort(key=lambda b: b.get("type") != "tool_result")
        content: Any = blocks[0]["text"] if len(blocks) == 1 and blocks[0]["type"] == "text" else blocks
        out.append({"role": role, "content": content})
    return out


def _messages_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            continue  # OpenAI "custom" (grammar) tools have no Anthropic form
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = schema
        out.append(entry)
    return out


def _messages_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    mapped: dict[str, Any] | None = None
    if choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mapped = {"type": "tool", "name": choice["function"].get("name")}
    if parallel is False:
        mapped = mapped or {"type": "auto"}
        if mapped["type"] != "none":  # the none choice has no such field
            mapped["disable_parallel_tool_use"] = True
    return mapped


def chat_to_messages(body: dict, model: str) -> dict:
    """An OpenAI chat request as an Anthropic Messages request for `model`.

    `temperature` is clamped to Anthropic's 0..1 range (OpenAI allows up to 2),
    since an out-of-range value would fail the whole fallback.
    """
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = texts(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            turns.append(("user", chat_parts_to_blocks(message.get("content"))))
        elif role == "assistant":
            turns.append(("assistant", _assistant_blocks(message)))
        elif role == "tool":
            turns.append(("user", [_tool_result_block(message)]))
    out: dict[str, Any] = {"model": model}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = _merge_turns(turns)
    out["max_tokens"] = int(_first_number(body, "max_completion_tokens", "max_tokens") or DEFAULT_MAX_TOKENS)
    temperature = _first_number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(max(temperature, 0), 1)
    if _first_number(body, "top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    if stops:
        out["stop_sequences"] = stops
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
    tools = _messages_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _messages_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice and tools:
        out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


# --- messages -> chat ---------------------------------------------------------------


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """One Anthropic user turn as OpenAI messages: `tool` messages first, then the rest.

    OpenAI tool messages carry text only, so images inside a tool_result move
    into the user message that follows; `is_error` has no equivalent and is
    dropped (the result text usually says what failed).
    """
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                text = "\n".join(b["text"] for b in inner if isinstance(b, dict) and b.get("type") == "text"
                                 and isinstance(b.get("text"), str))
                parts += [p for p in (image_part(b) for b in inner if isinstance(b, dict)
                                      and b.get("type") == "image") if p]
            else:
                text = inner if isinstance(inner, str) else ""
            tools.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "", "content": text})
        else:
            part = user_part(block)
            if part:
                parts.append(part)
    if parts:
        tools.append({"role": "user", "content": parts_content(parts)})
    return tools


def _assistant_message(content: Any) -> dict[str, Any] | None:
    """Text blocks joined with no separator (they are one continuous reply); thinking dropped."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    pieces: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            pieces.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(tool_call(block))
    if not pieces and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces) if pieces else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or "input_schema" not in tool or not tool.get("name"):
            continue  # server tools (web search, code execution...) run at Anthropic only
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        out.append({"type": "function", "function": function})
    return out


def _chat_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(kind or "")


def messages_to_chat(body: dict, model: str) -> dict:
    """An Anthropic Messages request as an OpenAI chat request for `model`.

    A streamed request also asks for `stream_options.include_usage`: without
    it an OpenAI stream carries no usage at all and the call could not be
    metered or reported in `message_delta.usage`. `max_tokens` keeps its
    name (OpenAI's reasoning models want `max_completion_tokens`; the caller
    may rename it for them), and only the first four stop sequences fit.
    """
    messages: list[dict[str, Any]] = []
    system = texts(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "user":
            messages += _user_messages(message.get("content"))
        elif message.get("role") == "assistant":
            converted = _assistant_message(message.get("content"))
            if converted:
                messages.append(converted)
    out: dict[str, Any] = {"model": model, "messages": messages}
    if _first_number(body, "max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if _first_number(body, key) is not None:
            out[key] = body[key]
    stops = [s for s in body.get("stop_sequences") or [] if isinstance(s, str)]
    if stops:
        out["stop"] = stops[:_OPENAI_MAX_STOPS]
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
        if body["stream"]:
            out["stream_options"] = {"include_usage": True}
    tools = _chat_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        mapped = _chat_tool_choice(choice)
        if mapped is not None:
            out["tool_choice"] = mapped
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        out["user"] = metadata["user_id"]
    return out
