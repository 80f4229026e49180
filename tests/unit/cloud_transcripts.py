"""Responses of xAI, Azure OpenAI, AWS Bedrock and Google Vertex AI, built from their documented formats.

Bedrock: Converse response and ConverseStream events (API reference: ConverseOutput,
TokenUsage, ConverseStreamOutput: messageStart, contentBlockStart/Delta/Stop, messageStop,
metadata), InvokeModelWithResponseStream `chunk` PayloadPart {"bytes": base64} of Anthropic
Messages stream events, with `amazon-bedrock-invocationMetrics` in the last one; all in AWS
event-stream frames. Vertex: generateContent / streamGenerateContent (alt=sse) as Gemini,
rawPredict / streamRawPredict as Anthropic Messages. Azure: chat completions with its
`prompt_filter_results` first chunk. xAI: OpenAI chat completions and responses.

Each transcript comes with the usage the contract expects from it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from llm_proxy.stream.eventstream import encode

# --- Bedrock ---------------------------------------------------------------------------------

BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
BEDROCK_MODEL_PATH = "us.anthropic.claude-sonnet-4-20250514-v1%3A0"  # as botocore sends it

CONVERSE_JSON: dict[str, Any] = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock."}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 120, "outputTokens": 35, "totalTokens": 1355,
              "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200},
    "metrics": {"latencyMs": 412},
}
# input = 120 + 1000 + 200
CONVERSE_USAGE = {"input_tokens": 1320, "output_tokens": 35, "cached_tokens": 1000, "cache_write_tokens": 200}


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    return encode({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                  json.dumps(payload).encode())


def exception(kind: str, message: str) -> bytes:
    return encode({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                  json.dumps({"message": message}).encode())


CONVERSE_STREAM_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("messageStart", {"role": "assistant", "p": "abcdefgh"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "abc"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " from Bedrock."}, "p": "abcdef"}),
    ("contentBlockStop", {"contentBlockIndex": 0, "p": "ab"}),
    ("contentBlockStart", {"contentBlockIndex": 1,
                           "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\": "}}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
    ("contentBlockStop", {"contentBlockIndex": 1}),
    ("messageStop", {"stopReason": "tool_use", "p": "abcd"}),
    ("metadata", {"usage": {"inputTokens": 50, "outputTokens": 22, "totalTokens": 372,
                            "cacheReadInputTokens": 300, "cacheWriteInputTokens": 0},
                  "metrics": {"latencyMs": 640}, "p": "abcdefghijk"}),
]
CONVERSE_STREAM = b"".join(event(name, payload) for name, payload in CONVERSE_STREAM_EVENTS)
CONVERSE_STREAM_USAGE = {"input_tokens": 350, "output_tokens": 22, "cached_tokens": 300, "cache_write_tokens": 0}

INVOKE_JSON: dict[str, Any] = {
    "id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hi!"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 14, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
              "output_tokens": 5},
}
INVOKE_USAGE = {"input_tokens": 14, "output_tokens": 5, "cached_tokens": 0, "cache_write_tokens": 0}

INVOKE_STREAM_EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {
        "id": "msg_bdrk_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000,
                  "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 9}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 25, "outputTokenCount": 9, "invocationLatency": 655, "firstByteLatency": 312}},
]


def chunk(inner: dict[str, Any]) -> bytes:
    payload = {"bytes": base64.b64encode(json.dumps(inner).encode()).decode(), "p": "abcdefghij"}
    return event("chunk", payload)


INVOKE_STREAM = b"".join(chunk(e) for e in INVOKE_STREAM_EVENTS)
INVOKE_STREAM_USAGE = {"input_tokens": 2125, "output_tokens": 9, "cached_tokens": 2000, "cache_write_tokens": 100}

# A model that is not Anthropic's (Meta Llama): only the invocation metrics count.
LLAMA_STREAM = b"".join(chunk(e) for e in [
    {"generation": "Hi", "prompt_token_count": 11, "generation_token_count": 1, "stop_reason": None},
    {"generation": "!", "prompt_token_count": None, "generation_token_count": 2, "stop_reason": "stop",
     "amazon-bedrock-invocationMetrics": {"inputTokenCount": 11, "outputTokenCount": 2,
                                          "invocationLatency": 100, "firstByteLatency": 50}},
])
LLAMA_STREAM_USAGE = {"input_tokens": 11, "output_tokens": 2}

# --- Vertex AI ---------------------------------------------------------------------------------

VERTEX_PROJECT_PATH = "/v1/projects/my-project/locations/us-central1/publishers/google/models"
VERTEX_CLAUDE = "claude-sonnet-4@20250514"
VERTEX_ANTHROPIC_PATH = "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models"

VERTEX_GEMINI_JSON: dict[str, Any] = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello from Vertex."}]},
                    "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 30,
                      "thoughtsTokenCount": 16, "trafficType": "ON_DEMAND"},
    "modelVersion": "gemini-2.5-flash", "createTime": "2026-11-30T05:00:00.000000Z", "responseId": "r1",
}
VERTEX_GEMINI_USAGE = {"input_tokens": 9, "output_tokens": 21, "reasoning_tokens": 16}

VERTEX_GEMINI_SSE = b"".join(
    b"data: " + json.dumps(obj).encode() + b"\r\n\r\n" for obj in [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
         "usageMetadata": {"trafficType": "ON_DEMAND"}, "modelVersion": "gemini-2.5-flash"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2, "totalTokenCount": 9,
                           "trafficType": "ON_DEMAND"}, "modelVersion": "gemini-2.5-flash"},
    ]
)
VERTEX_GEMINI_SSE_USAGE = {"input_tokens": 7, "output_tokens": 2}

VERTEX_RAW_JSON: dict[str, Any] = {
    "id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hello from Claude on Vertex."}], "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 500,
              "output_tokens": 12},
}
VERTEX_RAW_USAGE = {"input_tokens": 530, "output_tokens": 12, "cached_tokens": 500, "cache_write_tokens": 0}


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


VERTEX_RAW_SSE = sse([
    {"type": "message_start", "message": {
        "id": "msg_vrtx_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 1}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 6}},
    {"type": "message_stop"},
])
VERTEX_RAW_SSE_USAGE = {"input_tokens": 40, "output_tokens": 6, "cached_tokens": 0, "cache_write_tokens": 0}

# --- Azure OpenAI ------------------------------------------------------------------------------

AZURE_DEPLOYMENT = "my-gpt4o"
AZURE_CHAT_JSON: dict[str, Any] = {
    "id": "chatcmpl-az1", "object": "chat.completion", "created": 1764478800, "model": "gpt-4o-2024-11-20",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Hello from Azure.", "refusal": None},
                 "content_filter_results": {}}],
    "system_fingerprint": "fp_az",
    "usage": {"prompt_tokens": 1200, "completion_tokens": 10, "total_tokens": 1210,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
}
AZURE_CHAT_USAGE = {"input_tokens": 1200, "output_tokens": 10, "cached_tokens": 1024, "reasoning_tokens": 0}

AZURE_CHAT_SSE = b"".join(
    b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in [
        {"choices": [], "created": 0, "id": "", "model": "", "object": "",
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
        {"choices": [{"delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None, "index": 0,
                      "content_filter_results": {}}],
         "created": 1764478800, "id": "chatcmpl-az2", "model": "gpt-4o-2024-11-20",
         "object": "chat.completion.chunk", "system_fingerprint": "fp_az"},
        {"choices": [{"delta": {}, "finish_reason": "stop", "index": 0, "content_filter_results": {}}],
         "created": 1764478800, "id": "chatcmpl-az2", "model": "gpt-4o-2024-11-20",
         "object": "chat.completion.chunk", "system_fingerprint": "fp_az"},
        {"choices": [], "created": 1764478800, "id": "chatcmpl-az2", "model": "gpt-4o-2024-11-20",
         "object": "chat.completion.chunk", "system_fingerprint": "fp_az",
         "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}}},
    ]
) + b"data: [DONE]\n\n"
AZURE_CHAT_SSE_USAGE = {"input_tokens": 20, "output_tokens": 3, "cached_tokens": 0}

# --- xAI ------------------------------------------------------------------------------------

XAI_CHAT_JSON: dict[str, Any] = {
    "id": "xai-1", "object": "chat.completion", "created": 1764478800, "model": "grok-code-fast-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from Grok.", "refusal": None},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 200, "completion_tokens": 150, "total_tokens": 350,
              "prompt_tokens_details": {"text_tokens": 200, "audio_tokens": 0, "image_tokens": 0,
                                        "cached_tokens": 128},
              "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
              "num_sources_used": 0},
    "system_fingerprint": "fp_xai",
}
XAI_CHAT_USAGE = {"input_tokens": 200, "output_tokens": 150, "cached_tokens": 128, "reasoning_tokens": 120}

XAI_RESPONSES_JSON: dict[str, Any] = {
    "id": "resp_xai_1", "object": "response", "created_at": 1764478800, "status": "completed",
    "model": "grok-4-0709",
    "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Hi from Grok.", "annotations": []}]}],
    "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10},
              "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 30}, "total_tokens": 90},
}
XAI_RESPONSES_USAGE = {"input_tokens": 50, "output_tokens": 40, "cached_tokens": 10, "reasoning_tokens": 30}
