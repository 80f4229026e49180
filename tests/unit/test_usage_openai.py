"""OpenAI usage: chat/completions (JSON and stream), legacy completions, embeddings, Responses."""

from __future__ import annotations

import json

import pytest

from llm_proxy import apis
from llm_proxy.stream.framing import SSEDecoder
from llm_proxy.usage import Usage, error_text, json_usage, stream_parser
from llm_proxy.usage.openai import ChatStream, ResponsesStream, chat_usage, responses_usage
from tests.unit import transcripts as T


def parse_sse(parser, data: bytes):
    return T.feed(parser, SSEDecoder(), data)


def fields(u: Usage) -> tuple:
    return (u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens, u.cache_write_tokens,
            u.reasoning_tokens)


# --- chat JSON ---------------------------------------------------------------------------

def test_chat_json_with_details():
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": T.USAGE_WITH_DETAILS, "service_tier": "default"}
    usage, model = json_usage(apis.OPENAI_CHAT, body)
    assert model == "gpt-4o-mini-2024-07-18"
    # cache_write_tokens absent inside a details object that was sent -> 0 (known)
    assert fields(usage) == (1204, 312, 1516, 1024, 0, 64)


def test_chat_json_without_details_leaves_subsets_unknown():
    usage, _ = json_usage(apis.OPENAI_CHAT, {"model": "gpt-4o", "usage": T.USAGE_NO_DETAILS})
    assert fields(usage) == (149, 60, 209, None, None, None)


def test_chat_usage_with_cache_writes_gpt_5_6():
    u = chat_usage({"prompt_tokens": 5000, "completion_tokens": 100, "total_tokens": 5100,
                    "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 1500},
                    "completion_tokens_details": {"reasoning_tokens": 40}})
    assert fields(u) == (5000, 100, 5100, 3000, 1500, 40)


@pytest.mark.parametrize("body", [None, [], "text", {"model": "gpt-4o"}, {"usage": None}])
def test_chat_json_without_usage_is_unknown(body):
    usage, _ = json_usage(apis.OPENAI_CHAT, body)
    assert fields(usage) == (None, None, None, None, None, None)
    assert usage.known is False


def test_embeddings_json_output_is_zero_not_unknown():
    body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.02]}],
            "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    usage, model = json_usage(apis.OPENAI_EMBEDDINGS, body)
    assert model == "text-embedding-3-small"
    assert fields(usage) == (8, 0, 8, None, None, None)


def test_legacy_completions_json():
    body = {"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": "Hi", "index": 0, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    usage, model = json_usage(apis.OPENAI_COMPLETIONS, body)
    assert (model, fields(usage)) == ("gpt-3.5-turbo-instruct", (5, 7, 12, None, None, None))


# --- chat stream -------------------------------------------------------------------------

def test_chat_stream_usage_chunk_before_done():
    data, _ = T.openai_chat_stream()
    parser = parse_sse(ChatStream(), data)
    assert fields(parser.usage) == (1204, 312, 1516, 1024, 0, 64)
    assert parser.response_model == "gpt-4o-mini-2024-07-18"
    assert parser.error is None
    assert parser.body() == {
        "id": T.CHAT_ID, "created": T.CREATED, "system_fingerprint": T.FINGERPRINT,
        "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Bonjour — ça va? 日本"}}],
        "usage": T.USAGE_WITH_DETAILS,
    }


def test_chat_stream_usage_without_prompt_details_cached_is_none():
    data, _ = T.openai_chat_stream(usage=T.USAGE_NO_DETAILS)
    parser = parse_sse(ChatStream(), data)
    assert fields(parser.usage) == (149, 60, 209, None, None, None)


def test_chat_stream_prompt_details_without_cached_tokens_is_zero():
    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
             "prompt_tokens_details": {"audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    data, _ = T.openai_chat_stream(usage=usage)
    assert fields(parse_sse(ChatStream(), data).usage) == (9, 12, 21, 0, 0, 0)


def test_chat_stream_without_usage_chunk_is_unknown():
    data, _ = T.openai_chat_stream(usage=None)
    parser = parse_sse(ChatStream(), data)
    assert parser.usage.known is False
    assert parser.usage.total_tokens is None
    assert parser.body()["usage"] is None


def test_chat_stream_strip_returns_false_only_for_the_usage_chunk():
    data, usage_raw = T.openai_chat_stream()
    parser = ChatStream(strip_usage_chunk=True)
    decoder = SSEDecoder()
    verdicts = [(e.raw, parser.on_event(e.name, e.data)) for e in decoder.feed(data)]
    assert [raw for raw, keep in verdicts if not keep] == [usage_raw]
    assert len(verdicts) == 6


def test_chat_stream_tool_calls_assembled():
    parser = parse_sse(ChatStream(), T.openai_tool_call_stream())
    body = parser.body()
    assert body["choices"] == [{
        "index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "tool_calls": [
            {"id": "call_wX1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_wX2", "type": "function",
             "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
        ]},
    }]
    assert json.loads(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert fields(parser.usage) == (149, 60, 209, None, None, None)


def test_chat_stream_mid_stream_error():
    parser = parse_sse(ChatStream(), T.openai_chat_stream_error())
    assert parser.error == "server_error: The server had an error while processing your request. Sorry about that!"
    assert parser.usage.known is False
    assert parser.body()["choices"][0]["message"] == {"role": "assistant", "content": "Par"}


def test_chat_stream_tolerates_garbage_and_done():
    parser = ChatStream()
    assert parser.on_event(None, "not json") is True
    assert parser.on_event(None, "[DONE]") is True
    assert parser.on_event(None, "[1, 2]") is True
    assert parser.usage.known is False


def test_chat_stream_deepseek_reasoning_content_concatenates():
    chunks = [
        {"id": "c", "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                    "reasoning_content": "Think"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"reasoning_content": "ing."}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "42"}, "finish_reason": "stop"}]},
    ]
    data = b"".join(T.sse_event(json.dumps(c)) for c in chunks)
    message = parse_sse(ChatStream(), data).body()["choices"][0]["message"]
    assert message == {"role": "assistant", "reasoning_content": "Thinking.", "content": "42"}


def test_legacy_completions_stream():
    data, _ = T.openai_completions_stream()
    parser = stream_parser(apis.OPENAI_COMPLETIONS)
    parse_sse(parser, data)
    assert fields(parser.usage) == (5, 7, 12, None, None, None)
    assert parser.response_model == "gpt-3.5-turbo-instruct:20230824-v2"
    body = parser.body()
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "\n\nOnce upon a time", "finish_reason": "length"}]


# --- Responses ---------------------------------------------------------------------------

def test_responses_json():
    body = {"id": "resp_1", "object": "response", "model": "gpt-5.6-2026-07-01", "status": "completed",
            "usage": {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024,
                                                                     "cache_write_tokens": 100},
                      "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 128},
                      "total_tokens": 1500}}
    usage, model = json_usage(apis.OPENAI_RESPONSES, body)
    assert model == "gpt-5.6-2026-07-01"
    assert fields(usage) == (1200, 300, 1500, 1024, 100, 128)


def test_responses_usage_minimal():
    assert fields(responses_usage({"input_tokens": 3, "output_tokens": 4})) == (3, 4, 7, None, None, None)


def test_responses_stream_usage_only_in_completed():
    parser = ResponsesStream()
    decoder = SSEDecoder()
    events = decoder.feed(T.responses_stream())
    for event in events[:-1]:
        parser.on_event(event.name, event.data)
    assert parser.usage.known is False  # response.created / in_progress carry usage: null
    assert parser.response_model == "o4-mini-2025-04-16"
    parser.on_event(events[-1].name, events[-1].data)
    assert fields(parser.usage) == (2048, 500, 2548, 1920, 0, 384)
    assert parser.error is None
    assert parser.body()["status"] == "completed"
    assert parser.body()["usage"] == T.RESPONSES_USAGE


def test_responses_stream_incomplete_still_metered():
    data = T.responses_stream("response.incomplete", incomplete_details={"reason": "max_output_tokens"})
    parser = parse_sse(ResponsesStream(), data)
    assert fields(parser.usage) == (2048, 500, 2548, 1920, 0, 384)
    assert parser.error is None
    assert parser.body()["incomplete_details"] == {"reason": "max_output_tokens"}


def test_responses_stream_failed_sets_error():
    data = T.responses_stream(
        "response.failed", usage={"input_tokens": 30, "output_tokens": 0, "total_tokens": 30},
        error={"code": "server_error", "message": "The model failed to generate a response."},
    )
    parser = parse_sse(ResponsesStream(), data)
    assert parser.error == "server_error: The model failed to generate a response."
    assert fields(parser.usage) == (30, 0, 30, None, None, None)


def test_responses_stream_error_event():
    parser = parse_sse(ResponsesStream(), T.responses_stream_error_event())
    assert parser.error == "rate_limit_exceeded: Rate limit reached for o4-mini on tokens per min (TPM)."
    assert parser.usage.known is False
    body = parser.body()
    assert [e["event"] for e in body["stream_events"]] == ["response.created"]


# --- error_text for every provider's shape ----------------------------------------------

@pytest.mark.parametrize("body,expected", [
    ({"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min.",
                "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
     "requests: Rate limit reached for gpt-4o-mini in organization org-x on tokens per min."),
    ({"error": {"message": "Incorrect API key provided: sk-proj-****.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}},
     "invalid_request_error: Incorrect API key provided: sk-proj-****."),
    ({"error": {"message": "quota", "type": None, "code": "insufficient_quota"}}, "insufficient_quota: quota"),
    ({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded"},
      "request_id": "req_011CS"}, "rate_limit_error: Number of request tokens has exceeded"),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "overloaded_error: Overloaded"),
    ({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED", "details": []}},
     "RESOURCE_EXHAUSTED: Resource has been exhausted (e.g. check quota)."),
    ({"error": "model \"llama9\" not found, try pulling it first"}, "model \"llama9\" not found, try pulling it first"),
    ({"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 4},
     "server_error: boom"),
    ({"error": {"message": "just a message"}}, "just a message"),
    ({"error": {}}, "error"),
    ({"type": "error"}, "error"),
])
def test_error_text_shapes(body, expected):
    assert error_text(body) == expected


@pytest.mark.parametrize("body", [None, "oops", [1], {"ok": True}, {"error": None}, {"error": ""}])
def test_error_text_none(body):
    assert error_text(body) is None
