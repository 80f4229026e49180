"""The benchmark workloads: what a client sends, shared by `bench.run` and `bench.instructions`.

- ``small``: a tiny chat completion (two short messages, 9 tokens back), today's calls;
- ``stream``: the same question answered as an SSE stream of 300 chunks sent back to back;
- ``agent``: a coding agent's session: a ~20 KB system prompt, ~30 KB of tool schemas and a
  history of tool calls and results, ~150 KB on average. Each of the session's calls
  resends the whole conversation so far plus one more exchange (about 3 KB), as agents do;
  a connection walks through the session's calls and starts over.

Bodies are built deterministically (no randomness), so every target and every run
sends the very same bytes.
"""

from __future__ import annotations

import json
from typing import Any

MODEL = "gpt-4o-mini"
WORKLOADS = ("small", "stream", "agent")
STREAM_CHUNKS = 300
AGENT_CALLS = 20  # calls of one agent session (bodies grow from ~120 KB to ~180 KB)
_AGENT_FIRST_TURNS = 23  # exchanges already in the history at the session's first call
_TURN_BYTES = 3000


def parse_workloads(text: str) -> list[str]:
    """`small,stream` -> ["small", "stream"]; raises ValueError naming the unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise ValueError(f"unknown workload(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(WORKLOADS)}")
    return list(dict.fromkeys(names))


def scenario(workload: str) -> dict[str, Any]:
    """The fake upstream's `x-fake-scenario` for a workload's calls."""
    if workload == "stream":
        return {"input": 27, "output": STREAM_CHUNKS, "deltas": STREAM_CHUNKS, "delay": 0}
    if workload == "agent":
        return {"input": 38000, "output": 60}
    return {"input": 27, "output": 9}


def small_body(*, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 32, "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hello in one short sentence."}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def bodies(workload: str) -> list[str]:
    """The request bodies (JSON text) of a workload, in the order a connection sends them."""
    if workload == "agent":
        return [json.dumps(agent_body(call)) for call in range(AGENT_CALLS)]
    return [json.dumps(small_body(stream=workload == "stream"))]


# ----------------------------------------------------------------- the coding agent

def _prose(seed: int, size: int) -> str:
    """Deterministic English-like text of about `size` characters (instructions, code, logs)."""
    words = ("the", "file", "function", "returns", "error", "when", "test", "module", "import", "value",
             "config", "should", "never", "path", "request", "response", "handler", "update", "check", "user")
    out: list[str] = []
    n = seed
    length = 0
    while length < size:
        n = (n * 1103515245 + 12345) & 0x7FFFFFFF
        word = words[n % len(words)]
        if n % 17 == 0:
            word += ".\n"
        elif n % 11 == 0:
            word += ","
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def _tools() -> list[dict[str, Any]]:
    names = ("read_file", "write_file", "edit_file", "list_directory", "search_code", "run_command",
             "run_tests", "git_diff", "git_commit", "fetch_url", "ask_user", "todo_write")
    tools = []
    for i, name in enumerate(names):
        tools.append({"type": "function", "function": {
            "name": name, "description": _prose(100 + i, 1800),
            "parameters": {"type": "object", "required": ["path"], "properties": {
                "path": {"type": "string", "description": _prose(200 + i, 300)},
                "content": {"type": "string", "description": _prose(300 + i, 200)},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1},
                "options": {"type": "object", "additionalProperties": {"type": "string"}}}}}})
    return tools


def _turn(k: int) -> list[dict[str, Any]]:
    """One exchange: the assistant calls a tool, the tool answers (a file's text), ~_TURN_BYTES."""
    call_id = f"call_{k:04d}"
    return [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/module_{k}.py"})}}]},
        {"role": "tool", "tool_call_id": call_id, "content": _prose(1000 + k, _TURN_BYTES - 250)},
    ]


def agent_body(call: int) -> dict[str, Any]:
    """The body of the session's call number `call` (0-based): everything so far, resent."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": _prose(1, 20_000)},
        {"role": "user", "content": "Fix the failing test in tests/test_handler.py and explain the cause."},
    ]
    for k in range(_AGENT_FIRST_TURNS + call):
        messages += _turn(k)
    return {"model": MODEL, "messages": messages, "tools": _tools(), "tool_choice": "auto",
            "max_tokens": 4096, "temperature": 0}
