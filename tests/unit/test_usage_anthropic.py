"""Anthropic Messages usage: input = input + cache reads + cache writes; deltas overwrite."""

from __future__ import annotations

import pytest

from llm_proxy import apis
from llm_proxy.stream.framing import SSEDecoder
from llm_proxy.usage import json_usage, stream_parser
from llm_proxy.usage.anthropic import MessagesStream, merge_usage, messages_usage
from tests.unit import transcripts as T


def parse(data: bytes, pieces: int = 1) -> MessagesStream:
    parser = stream_parser(apis.ANTHROPIC_MESSAGES)
    assert isinstance(parser, MessagesStream)
    T.feed(parser, SSEDecoder(), data, len(data) // pieces)
    return parser


def fields(u) -> tuple:
    return (u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens, u.cache_write_tokens,
            u.cache_write_1h_tokens, u.reasoning_tokens, u.web_search_requests)


def test_json_input_is_input_plus_cache_read_plus_cache_creation():
    body = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
                      "output_tokens": 393, "service_tier": "standard"}}
    usage, model = json_usage(apis.ANTHROPIC_MESSAGES, body)
    assert model == "claude-sonnet-4-5-20250929"
    assert fields(usage) == (188107, 393, 188500, 0, 188086, 0, None, None)


def test_json_with_web_search_and_1h_cache():
    usage = messages_usage({"input_tokens": 1000, "cache_read_input_tokens": 4000,
                            "cache_creation_input_tokens": 3000,
                            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
                            "output_tokens": 700, "server_tool_use": {"web_search_requests": 3}})
    assert fields(usage) == (8000, 700, 8700, 4000, 3000, 2000, None, 3)


def test_json_writes_without_ttl_breakdown_are_all_5m():
    usage = messages_usage({"input_tokens": 10, "cache_creation_input_tokens": 500, "output_tokens": 5})
    assert fields(usage) == (510, 5, 515, 0, 500, 0, None, None)


def test_1h_split_larger_than_total_writes_makes_the_input_side_unknown():
    # The parts contradict each other and which one is wrong cannot be told: unknown, not clamped.
    usage = messages_usage({"input_tokens": 1, "cache_creation_input_tokens": 100,
                            "cache_creation": {"ephemeral_1h_input_tokens": 250}, "output_tokens": 1})
    assert fields(usage) == (None, 1, 1, None, None, None, None, None)


@pytest.mark.parametrize("u", [None, {}, {"output_tokens": 5}])
def test_json_without_input_tokens_leaves_input_and_cache_unknown(u):
    usage = messages_usage(u)
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (None, None, None)


def test_count_tokens_body_is_not_a_generation():
    usage, model = json_usage(apis.ANTHROPIC_COUNT_TOKENS, {"input_tokens": 2095})
    assert usage.known is False and model is None


def test_merge_usage_overwrites_non_null():
    current = {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 7}
    merge_usage(current, {"output_tokens": 400, "input_tokens": None, "cache_read_input_tokens": 9})
    assert current == {"input_tokens": 50, "output_tokens": 400, "cache_read_input_tokens": 9}
    merge_usage(current, "not a dict")
    assert current["output_tokens"] == 400


@pytest.mark.parametrize("pieces", [1, 3, 997])
def test_stream_start_plus_delta_overwrite_not_add(pieces):
    parser = parse(T.anthropic_stream(), pieces)
    # input 50 + read 10000 + write 2000 (of which 1h: 500); output 400 (never 1 + 400)
    assert fields(parser.usage) == (12050, 400, 12450, 10000, 2000, 500, 120, None)
    assert parser.response_model == "claude-sonnet-4-5-20250929"
    assert parser.error is None


def test_stream_body_rebuilds_thinking_text_and_tool_use():
    body = parse(T.anthropic_stream()).body()
    assert body["stop_reason"] == "tool_use"
    assert body["id"] == "msg_01XbQk7"
    assert body["model"] == "claude-sonnet-4-5-20250929"
    assert body["content"] == [
        {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EqQBCkYIBx"},
        {"type": "text", "text": "Let me check Paris."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
    ]
    assert body["usage"]["output_tokens"] == 400
    assert body["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500}


def test_stream_padded_json_and_ping_are_parsed():
    data = T.anthropic_stream()
    assert b'}  }\n' in data or b'} }\n' in data  # the padding quirk is really in the transcript
    assert b'data: {"type": "ping"}\n' in data
    parser = MessagesStream()
    assert parser.on_event("ping", '{"type": "ping"}') is True
    assert parser.usage.known is False


def test_stream_delta_repeating_larger_input_and_cache_wins():
    parser = parse(T.anthropic_server_tool_stream())
    # last message_delta: input 404500 + read 1200 + creation 0; output 943; thinking 261; 10 searches
    assert fields(parser.usage) == (405700, 943, 406643, 1200, 0, 0, 261, 10)


def test_stream_mid_stream_overloaded_error_keeps_start_usage():
    parser = parse(T.anthropic_overloaded_stream())
    assert parser.error == "overloaded_error: Overloaded"
    assert fields(parser.usage) == (812, 3, 815, 0, 0, 0, None, None)
    assert parser.body()["content"] == [{"type": "text", "text": "Sure"}]


def test_stream_cut_inside_tool_input_keeps_partial_json_text():
    parser = MessagesStream()
    parser.on_event("content_block_start", '{"type":"content_block_start","index":0,'
                                           '"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}')
    parser.on_event("content_block_delta", '{"type":"content_block_delta","index":0,'
                                           '"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": \\"ab"}}')
    parser.finish()
    assert parser.body()["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": '{"q": "ab'}]


def test_stream_tool_use_with_no_input_deltas_gets_empty_object():
    parser = MessagesStream()
    parser.on_event(None, '{"type":"content_block_start","index":0,'
                          '"content_block":{"type":"tool_use","id":"t","name":"now","input":{}}}')
    parser.on_event(None, '{"type":"content_block_delta","index":0,'
                          '"delta":{"type":"input_json_delta","partial_json":""}}')
    parser.on_event(None, '{"type":"content_block_stop","index":0}')
    assert parser.body()["content"] == [{"type": "tool_use", "id": "t", "name": "now", "input": {}}]


def test_stream_without_message_start_is_unknown():
    parser = MessagesStream()
    assert parser.on_event(None, "garbage") is True
    assert parser.usage.known is False
    assert parser.body() == {"content": [], "usage": None}
