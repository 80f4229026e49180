"""Fallback across formats: OpenAI chat <-> Anthropic Messages, requests, replies, streams, errors.

Exact-value tests pin every mapping; round trips then run the translated
bytes through the real SDKs (their SSE decoders, stream accumulators and
pydantic models, over an in-memory httpx transport) and through this
project's own meters, so "the client understands it" and "the meter counts
the same tokens" are both checked, not assumed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from llm_proxy.stream.framing import SSEDecoder
from llm_proxy.translate import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_to_messages,
    chat_to_messages_response,
    error_to_chat,
    error_to_messages,
    messages_to_chat,
    messages_to_chat_response,
)
from llm_proxy.translate import responses as translate_responses
from llm_proxy.translate import streams as translate_streams
from llm_proxy.usage import anthropic as anthropic_usage
from llm_proxy.usage import openai as openai_usage
from tests.unit import transcripts as T

NOW = 1767225600
PNG = "iVBORw0KGgo="


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """`created` comes from the clock; freeze it for the translators only, not for the SDKs."""
    clock = SimpleNamespace(time=lambda: NOW + 0.5)
    monkeypatch.setattr(translate_responses, "time", clock)
    monkeypatch.setattr(translate_streams, "time", clock)


def decode(raw: bytes) -> list[tuple[str | None, Any]]:
    """SSE bytes as (event name, parsed data) the way the proxy hands them to a translator."""
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.flush()
    return [(e.name, e.data if e.data.startswith("[DONE]") else json.loads(e.data)) for e in events if e.data]


def to_chat(raw: bytes, *, include_usage: bool = True) -> bytes:
    stream = MessagesToChatStream(include_usage=include_usage)
    return b"".join(stream.feed(name, data) for name, data in decode(raw)) + stream.finish()


def to_messages(raw: bytes) -> bytes:
    stream = ChatToMessagesStream()
    return b"".join(stream.feed(name, data) for name, data in decode(raw)) + stream.finish()


# --- requests: chat -> messages -----------------------------------------------------------


def test_chat_request_basics_system_images_merge_and_dropped_fields():
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            ]},
            {"role": "assistant", "content": "Un chat."},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Merci", "name": "bob"},
        ],
        "temperature": 1.5, "top_p": 0.9, "stop": "END", "stream": True,
        "stream_options": {"include_usage": True}, "n": 1, "logprobs": True, "seed": 7,
        "response_format": {"type": "json_object"}, "user": "user-42", "frequency_penalty": 0.1,
    }
    assert chat_to_messages(body, "claude-sonnet-4-5") == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Hi"},
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": "Un chat."},
            {"role": "user", "content": "Merci"},
        ],
        "max_tokens": 4096,
        "temperature": 1,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "user-42"},
    }


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, 4096),
    ({"max_tokens": 100}, 100),
    ({"max_completion_tokens": 200}, 200),
    ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
    ({"max_tokens": None}, 4096),
])
def test_chat_request_max_tokens(fields, expected):
    body = {"messages": [{"role": "user", "content": "x"}], **fields}
    assert chat_to_messages(body, "m")["max_tokens"] == expected


def test_chat_request_stop_list_and_non_base64_data_url_and_pdf():
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/gif,GIF89a"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]}], "stop": ["a", "b"], "temperature": 0.3}
    out = chat_to_messages(body, "m")
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]}]
    assert out["stop_sequences"] == ["a", "b"] and out["temperature"] == 0.3
    assert "system" not in out and "metadata" not in out and "stream" not in out


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
                    "input_schema": TOOLS[0]["function"]["parameters"]}]


def chat_tool_conversation() -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "unknown"}]},
        ],
        "tools": TOOLS,
        "tool_choice": "auto",
        "max_completion_tokens": 300,
    }


def test_chat_request_tool_calls_and_results():
    out = chat_to_messages(chat_tool_conversation(), "claude-haiku-4-5")
    assert out == {
        "model": "claude-haiku-4-5",
        "system": "You are a weather bot.",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "unknown"}]},
            ]},
        ],
        "max_tokens": 300,
        "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "auto"},
    }


def test_chat_request_tool_results_open_the_user_turn_and_ids_are_cleaned():
    body = {"messages": [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "functions.get:0", "type": "function", "function": {"name": "get", "arguments": "[1]"}}]},
        {"role": "user", "content": "also this"},
        {"role": "tool", "tool_call_id": "functions.get:0", "content": "ok"},
    ]}
    assert chat_to_messages(body, "m")["messages"] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "functions_get_0", "name": "get", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "functions_get_0", "content": "ok"},
            {"type": "text", "text": "also this"},
        ]},
    ]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "f"}}, False,
     {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
    (None, None, None),
    ("auto", True, {"type": "auto"}),
])
def test_chat_request_tool_choice(choice, parallel, expected):
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert chat_to_messages(body, "m").get("tool_choice") == expected


def test_chat_request_without_tools_sends_no_tool_choice_and_skips_custom_tools():
    body = {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
            "tools": [{"type": "custom", "custom": {"name": "grammar"}}]}
    out = chat_to_messages(body, "m")
    assert "tools" not in out and "tool_choice" not in out


def test_chat_request_function_without_parameters_gets_empty_object_schema():
    body = {"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "now"}}]}
    assert chat_to_messages(body, "m")["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}]


# --- requests: messages -> chat -----------------------------------------------------------


def test_messages_request_full_mapping():
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Use metric."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.png"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "18C"}, {"type": "text", "text": "sunny"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "max_tokens": 1024, "temperature": 0.2, "top_p": 0.8, "top_k": 5,
        "stop_sequences": ["###"], "stream": True, "metadata": {"user_id": "u-9"},
        "thinking": {"type": "enabled", "budget_tokens": 512},
        "tools": ANTHROPIC_TOOLS + [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    assert messages_to_chat(body, "gpt-4o") == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nUse metric."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.png"}},
            ]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C\nsunny"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "max_tokens": 1024, "temperature": 0.2, "top_p": 0.8, "stop": ["###"],
        "stream": True, "stream_options": {"include_usage": True},
        "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
        "user": "u-9",
    }


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_messages_request_tool_choice(choice, expected):
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "tools": ANTHROPIC_TOOLS,
            "tool_choice": choice}
    out = messages_to_chat(body, "m")
    assert out["tool_choice"] == expected and "parallel_tool_calls" not in out


def test_messages_request_plain_strings_and_no_stream_options_when_not_streaming():
    body = {"system": "sys", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"},
                                     {"type": "tool_result", "tool_use_id": "t2"}]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"}]},
    ], "max_tokens": 10, "stream": False, "tool_choice": {"type": "auto"}}
    assert messages_to_chat(body, "m") == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "tool", "tool_call_id": "t1", "content": "done"},
            {"role": "tool", "tool_call_id": "t2", "content": ""},
        ],
        "max_tokens": 10,
        "stream": False,
    }


def test_messages_request_keeps_the_four_stop_sequences_openai_allows():
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stop_sequences": list("abcde")}
    assert messages_to_chat(body, "m")["stop"] == ["a", "b", "c", "d"]


def test_tool_conversation_round_trip_chat_messages_chat():
    original = chat_tool_conversation()
    back = messages_to_chat(chat_to_messages(original, "claude"), "gpt-4o")
    msgs = original["messages"]
    assert back["messages"] == [
        msgs[0], msgs[1],
        {"role": "assistant", "content": None, "tool_calls": [
            msgs[2]["tool_calls"][0],
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        msgs[3],
        {"role": "tool", "tool_call_id": "call_2", "content": "unknown"},
    ]
    assert back["tools"] == TOOLS and back["tool_choice"] == "auto" and back["max_tokens"] == 300


def test_tool_conversation_round_trip_messages_chat_messages():
    original = {
        "model": "claude", "system": "sys", "max_tokens": 50, "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking"},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "18C"},
                {"type": "text", "text": "thanks"}]},
        ],
    }
    assert chat_to_messages(messages_to_chat(original, "gpt"), "claude") == original


# --- responses ------------------------------------------------------------------------------

ANTHROPIC_MESSAGE = {
    "id": "msg_01AbC", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "...", "signature": "sig"},
        {"type": "text", "text": "Let me check "},
        {"type": "text", "text": "Paris."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 10000,
              "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 0},
              "output_tokens": 400, "output_tokens_details": {"thinking_tokens": 120},
              "service_tier": "standard"},
}

CHAT_COMPLETION = {
    "id": "chatcmpl-Xy1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "On it.", "refusal": None, "annotations": [],
        "tool_calls": [
            {"id": "call_A", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
        ]}}],
    "usage": {"prompt_tokens": 1204, "completion_tokens": 312, "total_tokens": 1516,
              "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 100},
              "completion_tokens_details": {"reasoning_tokens": 64}},
}


def test_messages_to_chat_response_exact():
    assert messages_to_chat_response(ANTHROPIC_MESSAGE) == {
        "id": "chatcmpl-msg_01AbC", "object": "chat.completion", "created": NOW,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check Paris.", "refusal": None,
            "tool_calls": [{"id": "toolu_01", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 12050, "completion_tokens": 400, "total_tokens": 12450,
                  "prompt_tokens_details": {"cached_tokens": 10000, "cache_write_tokens": 2000},
                  "completion_tokens_details": {"reasoning_tokens": 120}},
    }


def test_messages_to_chat_response_without_text_has_null_content_and_sdk_parses_it():
    body = {**ANTHROPIC_MESSAGE, "content": [ANTHROPIC_MESSAGE["content"][3]],
            "usage": {"input_tokens": 7, "output_tokens": 3}}
    out = messages_to_chat_response(body)
    assert out["choices"][0]["message"]["content"] is None
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}}
    parsed = ChatCompletion.model_validate(messages_to_chat_response(ANTHROPIC_MESSAGE))
    assert parsed.choices[0].message.content == "Let me check Paris."
    assert parsed.choices[0].message.tool_calls[0].function.arguments == "{\"city\": \"Paris\"}"
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.usage.prompt_tokens_details.cached_tokens == 10000
    assert parsed.usage.prompt_tokens_details.cache_write_tokens == 2000


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
    (None, "stop"),
])
def test_stop_reason_to_finish_reason(stop, finish):
    out = messages_to_chat_response({**ANTHROPIC_MESSAGE, "stop_reason": stop})
    assert out["choices"][0]["finish_reason"] == finish


def test_chat_to_messages_response_exact_and_sdk_parses_it():
    out = chat_to_messages_response(CHAT_COMPLETION)
    assert out == {
        "id": "msg_chatcmpl-Xy1", "type": "message", "role": "assistant", "model": "gpt-4o-2024-08-06",
        "content": [
            {"type": "text", "text": "On it."},
            {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "id": "call_B", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 80, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 100,
                  "output_tokens": 312, "output_tokens_details": {"thinking_tokens": 64}},
    }
    message = Message.model_validate(out)
    assert message.content[0].text == "On it." and message.content[1].input == {"city": "Rome"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens, message.usage.output_tokens) == (80, 1024, 100, 312)


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn"),
])
def test_finish_reason_to_stop_reason(finish, stop):
    body = {"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": finish,
                                                  "message": {"role": "assistant", "content": "hi"}}]}
    assert chat_to_messages_response(body)["stop_reason"] == stop


def test_chat_to_messages_response_edge_cases():
    # tool calls that end in "stop" (some compatible servers) still ask the client to run tools
    body = {**CHAT_COMPLETION, "choices": [{**CHAT_COMPLETION["choices"][0], "finish_reason": "stop"}]}
    assert chat_to_messages_response(body)["stop_reason"] == "tool_use"
    # cached tokens larger than prompt (bad upstream) never give negative input; missing usage is zeros
    body = {"id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "content_filter", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6,
                  "prompt_tokens_details": {"cached_tokens": 9}}}
    out = chat_to_messages_response(body)
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"
    assert out["usage"] == {"input_tokens": 0, "cache_read_input_tokens": 9, "cache_creation_input_tokens": 0,
                            "output_tokens": 1}
    empty = chat_to_messages_response({"id": "y", "model": "m", "choices": []})
    assert empty["content"] == [] and empty["usage"]["input_tokens"] == 0
    Message.model_validate(empty)


def test_json_responses_round_trip_keeps_usage():
    back = chat_to_messages_response(messages_to_chat_response(ANTHROPIC_MESSAGE))
    assert back["usage"] == {"input_tokens": 50, "cache_read_input_tokens": 10000,
                             "cache_creation_input_tokens": 2000, "output_tokens": 400,
                             "output_tokens_details": {"thinking_tokens": 120}}
    assert back["content"] == [{"type": "text", "text": "Let me check Paris."}, ANTHROPIC_MESSAGE["content"][3]]


# --- errors -------------------------------------------------------------------------------

ANTHROPIC_ERROR = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"},
                   "request_id": "req_1"}
OPENAI_ERROR = {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                          "code": "rate_limit_exceeded"}}


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "invalid_request_error"), (403, "permission_error"),
    (404, "invalid_request_error"), (413, "invalid_request_error"), (429, "rate_limit_exceeded"),
    (500, "server_error"), (502, "server_error"), (529, "server_error"),
])
def test_error_to_chat_type_by_status(status, kind):
    assert error_to_chat(ANTHROPIC_ERROR, status) == {
        "error": {"message": "Slow down", "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"),
    (422, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_error_to_messages_type_by_status(status, kind):
    assert error_to_messages(OPENAI_ERROR, status) == {
        "type": "error", "error": {"type": kind, "message": "Rate limit reached"}}


@pytest.mark.parametrize(("body", "message"), [
    (None, "Service Unavailable"),
    ({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
     "The model is overloaded."),
    ({"error": "model 'x' not found"}, "model 'x' not found"),
    ({"message": "Bad gateway upstream"}, "Bad gateway upstream"),
    ({"detail": "Not authenticated"}, "Not authenticated"),
    ({}, "Service Unavailable"),
])
def test_error_message_from_any_provider(body, message):
    assert error_to_messages(body, 503)["error"]["message"] == message
    assert error_to_chat(body, 503)["error"] == {"message": message, "type": "server_error",
                                                 "param": None, "code": None}


def test_errors_in_their_own_shape_keep_type_and_code():
    assert error_to_chat(OPENAI_ERROR, 429) == OPENAI_ERROR
    assert error_to_messages(ANTHROPIC_ERROR, 400) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    assert error_to_chat(None, 599)["error"]["message"] == "HTTP 599"


# --- streams: Anthropic -> OpenAI -----------------------------------------------------------


def chunks_of(raw: bytes) -> list[Any]:
    return [data for _, data in decode(raw)]


def test_messages_to_chat_stream_exact_chunks():
    head = {"id": "chatcmpl-msg_01XbQk7", "object": "chat.completion.chunk", "created": NOW,
            "model": T.ANTHROPIC_MODEL}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}

    out = to_chat(T.anthropic_stream())
    assert out.endswith(b"\n\ndata: [DONE]\n\n") and b"\r" not in out
    assert chunks_of(out) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check "}),
        chunk({"content": "Paris."}),
        chunk({"tool_calls": [{"index": 0, "id": "toolu_01A", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ris\", \"unit\": \"c\"}"}}]}),
        chunk({}, "tool_calls"),
        {**head, "choices": [], "usage": {
            "prompt_tokens": 12050, "completion_tokens": 400, "total_tokens": 12450,
            "prompt_tokens_details": {"cached_tokens": 10000, "cache_write_tokens": 2000},
            "completion_tokens_details": {"reasoning_tokens": 120}}},
        "[DONE]",
    ]
    # compact JSON, one frame per chunk
    assert out.split(b"\n\n")[0] == (
        b'data: {"id":"chatcmpl-msg_01XbQk7","object":"chat.completion.chunk","created":1767225600,'
        b'"model":"claude-sonnet-4-5-20250929","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"finish_reason":null}],"usage":null}')


def test_messages_to_chat_stream_without_include_usage_has_no_usage_at_all():
    data = chunks_of(to_chat(T.anthropic_server_tool_stream(), include_usage=False))
    assert data[-1] == "[DONE]"
    assert all("usage" not in c and c["choices"] for c in data[:-1])
    assert [c["choices"][0]["delta"] for c in data[:-1]] == [{"role": "assistant", "content": ""},
                                                             {"content": "Found it."}, {}]
    assert data[-2]["choices"][0]["finish_reason"] == "stop"


def test_messages_to_chat_stream_usage_deltas_overwrite_never_add():
    usage = chunks_of(to_chat(T.anthropic_server_tool_stream()))[-2]["usage"]
    assert usage == {"prompt_tokens": 405700, "completion_tokens": 943, "total_tokens": 406643,
                     "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 261}}


def test_messages_to_chat_stream_error_event_becomes_error_chunk():
    data = chunks_of(to_chat(T.anthropic_overloaded_stream()))
    assert data[-2:] == [{"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": None}},
                         "[DONE]"]
    assert [c["choices"][0]["delta"] for c in data[:-2]] == [{"role": "assistant", "content": ""},
                                                             {"content": "Sure"}]


def test_messages_to_chat_stream_cut_short_makes_up_no_finish_reason():
    raw = T.anthropic_stream()
    cut = raw[:raw.index(b"event: message_delta")]
    data = chunks_of(to_chat(cut))
    assert all(c["choices"] == [] or c["choices"][0]["finish_reason"] is None for c in data[:-1])
    assert data[-2]["choices"] == [] and data[-2]["usage"]["completion_tokens"] == 1
    # ...but a stream that told its stop reason and then broke off still finishes
    cut = raw[:raw.index(b"event: message_stop")]
    assert chunks_of(to_chat(cut))[-3]["choices"][0]["finish_reason"] == "tool_calls"


def test_messages_to_chat_stream_multiple_tools_are_numbered_from_zero():
    stream = MessagesToChatStream(include_usage=False)
    stream.feed("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "c",
                                                                        "usage": {"input_tokens": 1}}})
    out = b""
    for index, (ident, name) in enumerate([("toolu_a", "f"), ("toolu_b", "g")], start=1):
        out += stream.feed(None, {"type": "content_block_start", "index": index,
                                  "content_block": {"type": "tool_use", "id": ident, "name": name, "input": {}}})
        out += stream.feed(None, {"type": "content_block_delta", "index": index,
                                  "delta": {"type": "input_json_delta", "partial_json": "{}"}})
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks_of(out)]
    assert [(c["index"], c.get("id")) for c in calls] == [(0, "toolu_a"), (0, None), (1, "toolu_b"), (1, None)]


def accumulate_openai(raw: bytes) -> Any:
    state = ChatCompletionStreamState()
    for data in chunks_of(raw):
        if data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(data))
    return state.get_final_completion()


def test_messages_to_chat_stream_through_openai_stream_state():
    final = accumulate_openai(to_chat(T.anthropic_stream()))
    choice = final.choices[0]
    assert choice.message.content == "Let me check Paris."
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_01A", "get_weather", {"city": "Paris", "unit": "c"})
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12050, 400)
    assert final.usage.prompt_tokens_details.cached_tokens == 10000


@pytest.mark.parametrize("transcript", [T.anthropic_stream, T.anthropic_server_tool_stream])
def test_meter_counts_the_same_tokens_after_translation_to_chat(transcript):
    raw = transcript()
    original = anthropic_usage.MessagesStream()
    for name, data in decode(raw):
        original.on_event(name, json.dumps(data))
    translated = openai_usage.ChatStream()
    for _, data in decode(to_chat(raw)):
        translated.on_event(None, data if isinstance(data, str) else json.dumps(data))
    a, b = original.usage, translated.usage
    assert (a.input_tokens, a.output_tokens, a.cached_tokens, a.cache_write_tokens, a.reasoning_tokens) == (
        b.input_tokens, b.output_tokens, b.cached_tokens, b.cache_write_tokens, b.reasoning_tokens)
    assert translated.response_model == T.ANTHROPIC_MODEL


# --- streams: OpenAI -> Anthropic -----------------------------------------------------------


def frames_of(raw: bytes) -> list[tuple[str | None, Any]]:
    events = decode(raw)
    assert all(name == data["type"] for name, data in events)
    return events


def test_chat_to_messages_stream_exact_frames():
    raw, _ = T.openai_chat_stream()
    out = to_messages(raw)
    assert out.startswith(b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_')
    assert [data for _, data in frames_of(out)] == [
        {"type": "message_start", "message": {
            "id": f"msg_{T.CHAT_ID}", "type": "message", "role": "assistant", "model": T.SNAPSHOT,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " — ça va? 日本"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"input_tokens": 180, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 0,
                   "output_tokens": 312, "output_tokens_details": {"thinking_tokens": 64}}},
        {"type": "message_stop"},
    ]


def test_chat_to_messages_stream_tool_calls_close_text_and_open_blocks():
    stream = ChatToMessagesStream()
    head = {"id": "c1", "model": "gpt", "object": "chat.completion.chunk"}

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

    out = stream.feed(None, delta({"role": "assistant", "content": "Checking."}))
    out += stream.feed(None, delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "f", "arguments": "{\"a\""}}]}))
    out += stream.feed(None, delta({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    out += stream.feed(None, delta({"tool_calls": [{"index": 1, "type": "function",
                                                    "function": {"name": "g", "arguments": ""}}]}))
    out += stream.feed(None, delta({}, "tool_calls"))
    out += stream.feed(None, "[DONE]")
    assert stream.finish() == b"" and stream.feed(None, delta({"content": "late"})) == b""
    assert [data for _, data in frames_of(out)][1:] == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "call_1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_msg_c1_1", "name": "g", "input": {}}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 0}},
        {"type": "message_stop"},
    ]


def test_chat_to_messages_stream_error_chunk_becomes_error_event():
    out = to_messages(T.openai_chat_stream_error())
    events = frames_of(out)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {
        "type": "api_error",
        "message": "The server had an error while processing your request. Sorry about that!"}}


def test_chat_to_messages_stream_without_chunks_sends_nothing_and_rate_limit_maps_to_429_type():
    stream = ChatToMessagesStream()
    assert stream.finish() == b""
    stream = ChatToMessagesStream()
    frame = stream.feed(None, {"error": {"message": "slow", "type": "tokens", "code": "rate_limit_exceeded"}})
    assert frame == b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow"}}\n\n'
    assert stream.finish() == b""


def accumulate_anthropic(raw: bytes) -> Any:
    adapter = TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in frames_of(raw):
        snapshot = accumulate_event(event=adapter.validate_python(data), current_snapshot=snapshot,
                                    json_bufs=json_bufs)
    return snapshot


def test_chat_to_messages_stream_through_anthropic_accumulator():
    message = accumulate_anthropic(to_messages(T.openai_tool_call_stream()))
    assert message.id == f"msg_{T.CHAT_ID}" and message.model == T.SNAPSHOT
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [
        ("tool_use", "call_wX1", "get_weather", {"city": "Paris"}),
        ("tool_use", "call_wX2", "get_time", {"tz": "CET"}),
    ]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens,
            message.usage.cache_read_input_tokens) == (149, 60, 0)
    Message.model_validate(message.to_dict())


@pytest.mark.parametrize("transcript", [lambda: T.openai_chat_stream()[0], T.openai_tool_call_stream])
def test_meter_counts_the_same_tokens_after_translation_to_messages(transcript):
    raw = transcript()
    original = openai_usage.ChatStream()
    for _, data in decode(raw):
        original.on_event(None, data if isinstance(data, str) else json.dumps(data))
    translated = anthropic_usage.MessagesStream()
    for name, data in decode(to_messages(raw)):
        translated.on_event(name, json.dumps(data))
    a, b = original.usage, translated.usage
    assert (a.input_tokens, a.output_tokens, a.cached_tokens or 0, a.cache_write_tokens or 0) == (
        b.input_tokens, b.output_tokens, b.cached_tokens, b.cache_write_tokens)
    assert translated.response_model == T.SNAPSHOT


# --- end to end through the real SDK clients (in-memory transport, no network) ---------------


def sse_response(body: bytes, http: Any = httpx) -> Any:
    return http.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def openai_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url="http://proxy.test/v1", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def anthropic_client(handler: Any) -> anthropic.Anthropic:
    """The Anthropic SDK runs on `httpx2` (it rejects `httpx` objects)."""
    return anthropic.Anthropic(api_key="sk-ant-test", base_url="http://proxy.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_openai_sdk_streams_a_reply_served_by_anthropic():
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        chat = json.loads(request.content)
        seen["upstream"] = chat_to_messages(chat, "claude-sonnet-4-5")
        include = bool((chat.get("stream_options") or {}).get("include_usage"))
        return sse_response(to_chat(T.anthropic_stream(), include_usage=include))

    client = openai_client(handler)
    with client.chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert seen["upstream"]["tools"] == ANTHROPIC_TOOLS and seen["upstream"]["stream"] is True
    assert "stream_options" not in seen["upstream"]
    message = final.choices[0].message
    assert message.content == "Let me check Paris." and final.choices[0].finish_reason == "tool_calls"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "unit": "c"}
    assert final.usage.total_tokens == 12450
    assert final.usage.completion_tokens_details.reasoning_tokens == 120


def test_anthropic_sdk_streams_a_reply_served_by_openai():
    seen: dict[str, Any] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen["upstream"] = messages_to_chat(json.loads(request.content), "gpt-4o-mini")
        return sse_response(to_messages(T.openai_chat_stream()[0]), httpx2)

    client = anthropic_client(handler)
    with client.messages.stream(model="claude-test", max_tokens=64,
                                messages=[{"role": "user", "content": "Salut"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert seen["upstream"]["stream_options"] == {"include_usage": True}
    assert text == "Bonjour — ça va? 日本" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
        180, 1024, 312)


def test_sdks_accept_translated_json_replies_and_errors():
    def to_openai(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["messages"][0]["content"] == "fail":
            return httpx.Response(429, json=error_to_chat(ANTHROPIC_ERROR, 429))
        return httpx.Response(200, json=messages_to_chat_response(ANTHROPIC_MESSAGE))

    client = openai_client(to_openai)
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Let me check Paris." and reply.usage.prompt_tokens == 12050
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "fail"}])
    assert caught.value.body == {"message": "Slow down", "type": "rate_limit_exceeded", "param": None, "code": None}

    def to_anthropic(request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content)["messages"][0]["content"] == "fail":
            return httpx2.Response(529, json=error_to_messages({"error": {"message": "busy"}}, 529))
        return httpx2.Response(200, json=chat_to_messages_response(CHAT_COMPLETION))

    client = anthropic_client(to_anthropic)
    reply = client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert [b.type for b in reply.content] == ["text", "tool_use", "tool_use"] and reply.usage.input_tokens == 80
    with pytest.raises(anthropic.APIStatusError) as status_error:
        client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "fail"}])
    assert status_error.value.status_code == 529
    assert status_error.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


def test_sdks_raise_on_translated_in_stream_errors():
    client = openai_client(lambda request: sse_response(to_chat(T.anthropic_overloaded_stream())))
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in client.chat.completions.create(model="g", messages=[{"role": "user", "content": "x"}], stream=True):
            pass
    client = anthropic_client(lambda request: sse_response(to_messages(T.openai_chat_stream_error()), httpx2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        for _ in client.messages.create(model="c", max_tokens=5, stream=True,
                                        messages=[{"role": "user", "content": "x"}]):
            pass
    assert caught.value.body["error"]["type"] == "api_error"
