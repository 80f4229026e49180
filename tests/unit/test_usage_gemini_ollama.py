"""Gemini (cumulative usageMetadata, thoughts, tool-use prompt) and Ollama native usage."""

from __future__ import annotations

import json

import pytest

from llm_proxy import apis
from llm_proxy.stream.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder
from llm_proxy.usage import json_usage, stream_parser
from llm_proxy.usage.gemini import GenerateStream, generate_usage
from llm_proxy.usage.ollama import NativeStream
from tests.unit import transcripts as T


run = T.feed


def fields(u) -> tuple:
    return (u.input_tokens, u.output_tokens, u.total_tokens, u.cached_tokens, u.cache_write_tokens,
            u.reasoning_tokens)


# --- Gemini ------------------------------------------------------------------------------

def test_gemini_usage_mapping():
    # input = prompt + toolUsePrompt; output = candidates + thoughts; cached = cachedContent
    assert fields(generate_usage(T.GEMINI_FINAL_USAGE)) == (1240, 800, 2040, 1000, None, 500)


def test_gemini_zero_counts_omitted_mean_zero():
    assert fields(generate_usage({"promptTokenCount": 18, "totalTokenCount": 18})) == (18, 0, 18, 0, None, 0)


def test_gemini_json():
    body = {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 2065, "cachedContentTokenCount": 2032,
                              "candidatesTokenCount": 9, "totalTokenCount": 2074},
            "modelVersion": "gemini-2.5-flash", "responseId": "abc"}
    usage, model = json_usage(apis.GEMINI_GENERATE, body)
    assert model == "gemini-2.5-flash"
    assert fields(usage) == (2065, 9, 2074, 2032, None, 0)


def test_gemini_json_without_usage_metadata_is_unknown():
    usage, model = json_usage(apis.GEMINI_GENERATE, {"candidates": [], "modelVersion": "gemini-2.5-pro"})
    assert usage.known is False and model == "gemini-2.5-pro"


@pytest.mark.parametrize("size", [None, 1, 7])
def test_gemini_sse_last_snapshot_wins(size):
    parser = run(stream_parser(apis.GEMINI_GENERATE), SSEDecoder(), T.gemini_sse(), size)
    assert fields(parser.usage) == (1240, 800, 2040, 1000, None, 500)  # not summed over chunks
    assert parser.response_model == "gemini-2.5-pro"
    assert parser.error is None
    events = parser.body()["stream_events"]
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == ["1\n2\n3", "\n4\n5", "\n6"]


def test_gemini_intermediate_snapshot_is_the_current_value():
    parser = GenerateStream()
    decoder = SSEDecoder()
    first = decoder.feed(T.gemini_sse())[0]
    parser.on_event(first.name, first.data)
    assert fields(parser.usage) == (1200, 531, 1731, 1000, None, 500)


def test_gemini_json_array_stream():
    parser = run(GenerateStream(), JSONArrayDecoder(), T.gemini_array(), 13)
    assert fields(parser.usage) == (1240, 800, 2040, 1000, None, 500)
    assert len(parser.body()["stream_events"]) == 3


def test_gemini_error_chunk():
    parser = run(GenerateStream(), SSEDecoder(), T.gemini_error_sse())
    assert parser.error == "UNAVAILABLE: The model is overloaded. Please try again later."
    assert fields(parser.usage) == (7, 0, 7, 0, None, 0)


# --- Ollama ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [None, 1, 7])
def test_ollama_ndjson_done_line_counts(size):
    parser = run(stream_parser(apis.OLLAMA_CHAT), NDJSONDecoder(), T.ollama_chat_lines(), size)
    assert fields(parser.usage) == (26, 290, 316, None, None, None)
    assert parser.response_model == "llama3.1:8b"
    assert parser.error is None
    assert len(parser.body()["stream_events"]) == 6


def test_ollama_absent_count_on_done_line_is_zero():
    data = T.ollama_chat_lines(prompt_eval=None)  # KV-cached prompt: prompt_eval_count omitted
    parser = run(NativeStream(), NDJSONDecoder(), data)
    assert fields(parser.usage) == (0, 290, 290, None, None, None)


def test_ollama_stream_cut_before_done_is_unknown():
    parser = run(NativeStream(), NDJSONDecoder(), T.ollama_chat_lines(done=False))
    assert parser.usage.known is False
    assert fields(parser.usage) == (None, None, None, None, None, None)


def test_ollama_error_line():
    data = T.ollama_chat_lines(done=False)[:200].rsplit(b"\n", 1)[0] + b"\n"
    data += b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
    parser = run(NativeStream(), NDJSONDecoder(), data)
    assert parser.error == "an error was encountered while running the model: unexpected EOF"
    assert parser.usage.known is False


def test_ollama_generate_without_trailing_newline():
    lines = [{"model": "qwen3:4b", "response": "Hi", "done": False},
             {"model": "qwen3:4b", "response": "", "done": True, "done_reason": "stop",
              "prompt_eval_count": 11, "eval_count": 2}]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    parser = run(stream_parser(apis.OLLAMA_GENERATE), NDJSONDecoder(), data, 5)
    assert fields(parser.usage) == (11, 2, 13, None, None, None)


@pytest.mark.parametrize("api,body,expected", [
    (apis.OLLAMA_CHAT, {"model": "llama3.1:8b", "message": {"role": "assistant", "content": "Hi"}, "done": True,
                        "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 290}, (26, 290, 316)),
    (apis.OLLAMA_GENERATE, {"model": "llama3.1:8b", "response": "Hi", "done": True, "eval_count": 4}, (0, 4, 4)),
    (apis.OLLAMA_EMBED, {"model": "all-minilm", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 8}, (8, 0, 8)),
])
def test_ollama_stream_false_json(api, body, expected):
    usage, model = json_usage(api, body)
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == expected
    assert model == body["model"]


def test_stream_parser_for_shapes_without_streams():
    assert stream_parser(apis.OPENAI_EMBEDDINGS) is None
    assert stream_parser(apis.OLLAMA_EMBED) is None
    assert stream_parser(apis.OTHER) is None


def test_kept_events_are_bounded():
    parser = GenerateStream()
    chunk = json.dumps(T.gemini_chunks()[0])
    for _ in range(250):
        parser.on_event(None, chunk)
    body = parser.body()
    assert len(body["stream_events"]) == 200
    assert body["dropped_events"] == 50
