"""Every API shape through a real mitmdump, with real SDK clients, checked in PostgreSQL.

Expected costs are worked out by hand from the shipped pricing.toml, so a
change of formula or of price shows up here.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, Rows, anthropic_client, openai_client, scenario


def gemini_client(proxy: Proxy, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=f"{proxy.url}/gemini"))


def test_openai_chat_json(proxy: Proxy, rows: Rows, key: str) -> None:
    reply = openai_client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers=scenario(input=1204, output=312, cached=200),
    )
    assert reply.usage is not None and reply.usage.prompt_tokens == 1204
    [row] = rows.wait(key)
    assert (row["provider"], row["api"], row["model"], row["streaming"], row["status"]) == (
        "openai", "openai-chat", "gpt-4o-mini", False, 200)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (1204, 312, 1516)
    assert (row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]) == (200, 0, 0)
    # (1004 * 0.15 + 200 * 0.075 + 312 * 0.60) / 1e6
    assert row["cost_usd"] == Decimal("0.0003528")
    assert row["request_body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert row["response_body"]["choices"][0]["message"]["content"] == reply.choices[0].message.content
    assert row["path"] == "/v1/chat/completions" and row["error"] is None
    assert row["duration_ms"] >= 0 and row["ttft_ms"] is not None and row["client_addr"] == "127.0.0.1"


def test_openai_stream_gets_usage_the_client_did_not_ask_for(
    proxy: Proxy, rows: Rows, key: str, upstream: FakeUpstream
) -> None:
    stream = openai_client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers=scenario(input=50, output=6, reasoning=2),
    )
    chunks = list(stream)
    # The client sees the stream it asked for: no usage-only chunk with empty choices.
    assert chunks and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "w0 w1 w2 w3 w4 w5 "
    sent = [r for r in upstream.requests if r.headers.get("authorization") == f"Bearer {key}"]
    assert sent[-1].json["stream_options"] == {"include_usage": True}
    assert sent[-1].headers["accept-encoding"] == "identity"
    [row] = rows.wait(key)
    assert (row["streaming"], row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (True, 50, 6, 2)
    assert row["request_body"].get("stream_options") is None  # stored as the client sent it
    assert row["response_body"]["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 w5 "
    assert row["response_body"]["usage"]["prompt_tokens"] == 50
    # (50 * 0.15 + 6 * 0.60) / 1e6
    assert row["cost_usd"] == Decimal("0.0000111")


def test_openai_stream_with_include_usage_keeps_the_usage_chunk(proxy: Proxy, rows: Rows, key: str) -> None:
    chunks = list(openai_client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, extra_headers=scenario(input=20, output=3),
    ))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 20
    [row] = rows.wait(key)
    assert (row["input_tokens"], row["output_tokens"]) == (20, 3)


def test_legacy_completions_stream_and_embeddings(proxy: Proxy, rows: Rows, key: str) -> None:
    client = openai_client(proxy, key)
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="gpt-4o-mini", prompt="hi", stream=True, extra_headers=scenario(input=11, output=7),
    ) if c.choices)
    assert text == "w0 w1 w2 w3 w4 w5 w6 "
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], extra_headers=scenario(input=8))
    completion, embedding = rows.wait(key, 2)
    assert (completion["api"], completion["input_tokens"], completion["output_tokens"]) == ("openai-completions", 11, 7)
    assert completion["cost_usd"] == Decimal("0.00000585")  # (11 * 0.15 + 7 * 0.60) / 1e6
    assert (embedding["api"], embedding["input_tokens"], embedding["output_tokens"]) == ("openai-embeddings", 8, 0)
    assert embedding["cost_usd"] == Decimal("0.00000016")  # 8 * 0.02 / 1e6


def test_responses_json_and_stream(proxy: Proxy, rows: Rows, key: str) -> None:
    client = openai_client(proxy, key)
    usage = scenario(input=2000, cached=1000, output=500, reasoning=200)
    reply = client.responses.create(model="gpt-5", input="hi", extra_headers=usage)
    events = list(client.responses.create(model="gpt-5", input="hi", stream=True, extra_headers=usage))
    assert reply.output_text and events[-1].type == "response.completed"
    for row in rows.wait(key, 2):
        assert (row["api"], row["input_tokens"], row["cached_tokens"]) == ("openai-responses", 2000, 1000)
        assert (row["output_tokens"], row["reasoning_tokens"]) == (500, 200)
        # (1000 * 1.25 + 1000 * 0.125 + 500 * 10) / 1e6: reasoning is inside output, not added
        assert row["cost_usd"] == Decimal("0.006375")
    assert row["streaming"] and row["response_body"]["status"] == "completed"


def test_anthropic_json_and_stream_with_cache_writes(proxy: Proxy, rows: Rows, key: str) -> None:
    client = anthropic_client(proxy, key)
    usage = scenario(input=5000, cached=3000, cache_write=1500, cache_write_1h=500, output=400)
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=500, messages=[{"role": "user", "content": "hi"}], extra_headers=usage
    )
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=500, messages=[{"role": "user", "content": "hi"}], extra_headers=usage
    ) as stream:
        final = stream.get_final_message()
    assert message.usage.input_tokens == final.usage.input_tokens == 500  # Anthropic's count excludes cache
    json_row, stream_row = rows.wait(key, 2)
    for row in (json_row, stream_row):
        assert (row["provider"], row["api"], row["path"]) == ("anthropic", "anthropic-messages", "/anthropic/v1/messages")
        assert (row["input_tokens"], row["cached_tokens"], row["cache_write_tokens"]) == (5000, 3000, 1500)
        assert (row["output_tokens"], row["total_tokens"]) == (400, 5400)
        # (500 * 3 + 3000 * 0.30 + 1000 * 3.75 + 500 * 6 + 400 * 15) / 1e6: 1h writes at 2x input
        assert row["cost_usd"] == Decimal("0.01515")
    assert stream_row["streaming"] and stream_row["response_body"]["content"][0]["text"] == final.content[0].text
    assert stream_row["response_body"]["stop_reason"] == "end_turn"


def test_gemini_generate_and_stream(proxy: Proxy, rows: Rows, key: str, upstream: FakeUpstream) -> None:
    client = gemini_client(proxy, key)
    config = genai_types.GenerateContentConfig(
        http_options=genai_types.HttpOptions(headers=scenario(input=1000, cached=400, output=300, reasoning=100))
    )
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
    pieces = [c.text for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi", config=config)]
    assert reply.usage_metadata.thoughts_token_count == 100 and "".join(pieces)
    assert upstream.requests[-1].path.endswith("gemini-2.5-flash:streamGenerateContent")
    for row in rows.wait(key, 2):
        assert (row["provider"], row["api"], row["model"]) == ("gemini", "gemini-generate", "gemini-2.5-flash")
        assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
            1000, 400, 300, 100)
        # (600 * 0.30 + 400 * 0.03 + 300 * 2.50) / 1e6: thoughts billed as output
        assert row["cost_usd"] == Decimal("0.000942")
    assert row["streaming"] is True


@pytest.mark.parametrize("path", ["/ollama/api/chat", "/ollama/api/generate"])
def test_ollama_native_stream_by_default_and_json(proxy: Proxy, rows: Rows, key: str, path: str) -> None:
    headers = {"authorization": f"Bearer {key}", **scenario(input=26, output=9)}
    body = {"model": "llama3.1", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=10) as http:
        streamed = http.post(path, json=body)
        single = http.post(path, json={**body, "stream": False})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert len(streamed.text.splitlines()) == 10 and single.json()["done"] is True
    stream_row, json_row = rows.wait(key, 2)
    assert (stream_row["streaming"], json_row["streaming"]) == (True, False)
    for row in (stream_row, json_row):
        assert (row["provider"], row["input_tokens"], row["output_tokens"], row["cost_usd"]) == ("ollama", 26, 9, 0)


def test_streams_are_not_buffered(proxy: Proxy, rows: Rows, key: str) -> None:
    """200 ms between upstream events: the first must arrive long before the last is sent."""
    started = time.monotonic()
    arrivals = []
    stream = openai_client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers=scenario(output=6, delay=0.2),
    )
    for _ in stream:
        arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8  # role chunk, 6 deltas, finish chunk
    assert arrivals[-1] - arrivals[0] > 1.2  # the upstream pacing reached the client
    assert arrivals[0] < 0.5, f"first event after {arrivals[0]:.2f}s: buffered?"
    [row] = rows.wait(key)
    assert row["ttft_ms"] < 500 and row["duration_ms"] >= 1200


def test_mid_stream_errors_are_recorded(proxy: Proxy, rows: Rows, key: str) -> None:
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client(proxy, key).messages.stream(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
            extra_headers=scenario(input=30, output=9, error_after=2),
        ) as stream:
            stream.get_final_message()
    with pytest.raises(openai.APIError):
        list(openai_client(proxy, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=scenario(error_after=2),
        ))
    anthropic_row, openai_row = rows.wait(key, 2)
    assert anthropic_row["status"] == 200 and anthropic_row["error"] == "overloaded_error: Overloaded"
    assert anthropic_row["input_tokens"] == 30  # what message_start reported is kept
    assert openai_row["status"] == 200 and openai_row["error"] == "server_error: fake mid-stream failure"


def test_http_errors_pass_through_and_are_recorded(proxy: Proxy, rows: Rows, key: str) -> None:
    with pytest.raises(openai.RateLimitError):
        openai_client(proxy, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=scenario(status=429),
        )
    with pytest.raises(anthropic.InternalServerError):
        anthropic_client(proxy, key).messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
            extra_headers=scenario(status=529),
        )
    openai_row, anthropic_row = rows.wait(key, 2)
    assert openai_row["status"] == 429 and openai_row["error"].startswith("HTTP 429: ")
    assert openai_row["input_tokens"] is None and openai_row["cost_usd"] is None
    assert anthropic_row["status"] == 529 and anthropic_row["error"].startswith("HTTP 529: overloaded_error")


def test_client_disconnect_mid_stream_still_yields_a_row(proxy: Proxy, rows: Rows, key: str) -> None:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", **scenario(input=40, output=30, delay=0.1)}
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        with http.stream("POST", "/anthropic/v1/messages", json=body, headers=headers) as response:
            lines = response.iter_lines()
            while "content_block_delta" not in next(lines):
                pass
    [row] = rows.wait(key)
    assert row["status"] == 200 and row["streaming"] is True
    assert row["error"], "a client that hung up must leave an error on the row"
    assert row["input_tokens"] == 40 and row["output_tokens"] is not None and row["output_tokens"] < 30


def test_upstream_dropping_a_stream_is_recorded(proxy: Proxy, rows: Rows, key: str) -> None:
    with pytest.raises(openai.APIError):
        list(openai_client(proxy, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=scenario(drop_after=2),
        ))
    [row] = rows.wait(key)
    assert row["status"] == 200 and row["error"] and row["input_tokens"] is None


def test_big_bodies_are_capped(proxy: Proxy, rows: Rows, key: str) -> None:
    """The module proxy stores at most 64 KiB per body column."""
    openai_client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 100_000}]
    )
    [row] = rows.wait(key)
    assert row["request_body"]["truncated"] is True and row["request_body"]["size_bytes"] > 100_000
    assert row["input_tokens"] == 11 and row["response_body"]["object"] == "chat.completion"


def test_unknown_model_costs_null_and_warns_once(proxy: Proxy, rows: Rows, key: str) -> None:
    client = openai_client(proxy, key)
    for _ in range(2):
        client.chat.completions.create(model="no-such-model-x1", messages=[{"role": "user", "content": "hi"}])
    for row in rows.wait(key, 2):
        assert row["input_tokens"] == 11 and row["cost_usd"] is None
    assert proxy.log.count("openai/no-such-model-x1: no price in pricing.toml") == 1


def test_secrets_never_reach_rows_or_logs(proxy: Proxy, rows: Rows, key: str) -> None:
    gemini_key = key + "-gemini"
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        http.post(
            f"/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={gemini_key}",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    [row] = rows.wait(gemini_key)
    assert row["path"] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=***"
    assert gemini_key not in json.dumps(row, default=str) and gemini_key not in proxy.log
