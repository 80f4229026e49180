"""xAI, Azure OpenAI, AWS Bedrock and Vertex AI: paths, hosts, parsers, the event-stream decoder, prices."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tflow, tutils

from llm_proxy import apis
from llm_proxy.calls import close_call, open_call
from llm_proxy.config.errors import ConfigError
from llm_proxy.config.hostnames import host_pattern
from llm_proxy.config.pricing import PriceBook
from llm_proxy.config.providers import load_providers
from llm_proxy.errors import local_response
from llm_proxy.paths import DEFAULT_PROVIDERS
from llm_proxy.pricer import Pricer
from llm_proxy.redact import client_key, fingerprint, is_signed, mask_url, replace_credentials
from llm_proxy.routing import plan_call, route_request
from llm_proxy.stream.eventstream import EventStreamDecoder, encode, parse_headers
from llm_proxy.stream.meter import StreamMeter, decoder_for
from llm_proxy.usage import Usage, json_usage, stream_parser
from tests.unit import cloud_transcripts as T

PROVIDERS = load_providers(DEFAULT_PROVIDERS, env={})
SIGV4 = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=content-type;host;x-amz-date, Signature=" + "ab" * 32)


def usage_dict(usage: Usage, keys: dict[str, int]) -> dict[str, int | None]:
    return {k: getattr(usage, k) for k in keys}


# --- paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "api", "model", "stream"), [
    (f"/model/{T.BEDROCK_MODEL_PATH}/converse", apis.BEDROCK_CONVERSE, T.BEDROCK_MODEL, False),
    (f"/model/{T.BEDROCK_MODEL_PATH}/converse-stream", apis.BEDROCK_CONVERSE, T.BEDROCK_MODEL, True),
    ("/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", apis.BEDROCK_INVOKE,
     "anthropic.claude-3-5-haiku-20241022-v1:0", False),
    (f"/model/{T.BEDROCK_MODEL_PATH}/invoke-with-response-stream", apis.BEDROCK_INVOKE, T.BEDROCK_MODEL, True),
    ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-"
     "20250514-v1%3A0/converse", apis.BEDROCK_CONVERSE, T.BEDROCK_MODEL, False),
    (f"{T.VERTEX_PROJECT_PATH}/gemini-2.5-flash:generateContent", apis.GEMINI_GENERATE, "gemini-2.5-flash", False),
    (f"{T.VERTEX_PROJECT_PATH}/gemini-2.5-flash:streamGenerateContent", apis.GEMINI_GENERATE,
     "gemini-2.5-flash", True),
    (f"{T.VERTEX_ANTHROPIC_PATH}/{T.VERTEX_CLAUDE}:rawPredict", apis.VERTEX_ANTHROPIC, T.VERTEX_CLAUDE, False),
    (f"{T.VERTEX_ANTHROPIC_PATH}/claude-sonnet-4%4020250514:streamRawPredict", apis.VERTEX_ANTHROPIC,
     T.VERTEX_CLAUDE, True),
])
def test_api_model_and_stream_from_path(path, api, model, stream):
    assert apis.api_for_path(path) == api
    assert apis.model_from_path(path, api) == model
    assert apis.wants_stream(api, path, {"stream": not stream}) is stream  # the path decides, not the body


@pytest.mark.parametrize(("path", "api"), [
    (f"{T.VERTEX_ANTHROPIC_PATH}/count-tokens:rawPredict", apis.ANTHROPIC_COUNT_TOKENS),
    ("/v1/projects/p/locations/l/publishers/mistralai/models/mistral-large:rawPredict", apis.OTHER),
    ("/openai/deployments/my-gpt4o/chat/completions", apis.OPENAI_CHAT),
    ("/openai/deployments/emb/embeddings", apis.OPENAI_EMBEDDINGS),
    ("/openai/v1/responses", apis.OPENAI_RESPONSES),
    ("/converse", apis.OTHER),  # Bedrock operations only under /model/{id}/
    ("/x/invoke", apis.OTHER),
    ("/model/converse", apis.OTHER),
])
def test_other_paths(path, api):
    assert apis.api_for_path(path) == api


def test_azure_deployment_names_the_model_unless_the_body_does():
    flow = make_flow("/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21", {"messages": []},
                     host="res.openai.azure.com")
    call = open_call(flow, route_of(flow))
    assert (call.route.provider.name, call.route.api, call.model) == ("azure", apis.OPENAI_CHAT, "my-gpt4o")
    flow = make_flow("/openai/v1/chat/completions", {"model": "gpt-4.1", "messages": []},
                     host="res.cognitiveservices.azure.com")
    assert open_call(flow, route_of(flow)).model == "gpt-4.1"


# --- hosts ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "provider"), [
    ("api.x.ai", "xai"),
    ("my-resource.openai.azure.com", "azure"),
    ("My-Resource.OpenAI.Azure.com.", "azure"),
    ("foundry1.services.ai.azure.com", "azure"),
    ("bedrock-runtime.eu-central-1.amazonaws.com", "bedrock"),
    ("bedrock-runtime-fips.us-east-1.amazonaws.com", "bedrock"),
    ("us-east5-aiplatform.googleapis.com", "vertex"),
    ("aiplatform.googleapis.com", "vertex"),
    ("openai.azure.com", None),
    ("a.b.openai.azure.com", None),
    ("evil.example/x.openai.azure.com", None),
    ("bedrock.us-east-1.amazonaws.com", None),  # the control plane, not the runtime
    ("bedrock-runtime.us-east-1.amazonaws.com.evil.example", None),
    ("-aiplatform.googleapis.com", None),
])
def test_wildcard_hosts_match_one_label(host, provider):
    found = PROVIDERS.for_host(host, 443)
    assert (found.name if found else None) == provider


@pytest.mark.parametrize("entry", ["*.com", "*.*.com", "openai.*", "*.azure.*", "*", "*.a_b.com", "a..*.com"])
def test_unsafe_wildcards_are_refused(tmp_path: Path, entry):
    with pytest.raises(ValueError):
        host_pattern(entry)
    path = tmp_path / "providers.toml"
    path.write_text(f'[providers.x]\nbase_url = "https://x.example.com"\nformat = "openai"\nhosts = ["{entry}"]\n')
    with pytest.raises(ConfigError, match="hosts"):
        load_providers(path, env={})


def test_key_header_must_be_a_key_header(tmp_path: Path):
    path = tmp_path / "providers.toml"
    path.write_text('[providers.x]\nbase_url = "https://x.example.com"\nformat = "openai"\nkey_header = "cookie"\n')
    with pytest.raises(ConfigError, match="key_header"):
        load_providers(path, env={})


def test_azure_real_key_goes_in_api_key_header():
    flow = make_flow("/openai/v1/chat/completions", {"model": "gpt-4.1"}, headers={"api-key": "sk-virtual"})
    replace_credentials(flow.request, "openai", "azure-real", PROVIDERS.get("azure").key_header)
    assert flow.request.headers.get_all("api-key") == ["azure-real"]
    assert "authorization" not in flow.request.headers


# --- signed requests -------------------------------------------------------------------------

def test_a_signed_request_is_not_altered_at_all():
    body = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    flow = make_flow(f"/model/{T.BEDROCK_MODEL_PATH}/converse-stream", body,
                     host="bedrock-runtime.us-east-1.amazonaws.com", port=443,
                     headers={"X-Amz-Date": "20261130T050000Z", "Authorization": SIGV4})
    before = (flow.request.method, flow.request.data.path, flow.request.headers.fields, flow.request.raw_content,
              flow.request.url)
    route = route_of(flow)
    call = open_call(flow, route)
    after = (flow.request.method, flow.request.data.path, flow.request.headers.fields, flow.request.raw_content,
             flow.request.url)
    assert after == before  # accept-encoding too
    assert (route.provider.name, call.model, call.streaming) == ("bedrock", T.BEDROCK_MODEL, True)
    # The passthrough key_id names the access key, not the per-request signature.
    assert client_key(flow.request) == "aws-sigv4:AKIDEXAMPLE"
    assert call.key_id == fingerprint("aws-sigv4:AKIDEXAMPLE")
    # And the plan never moves it, whatever the retries setting.
    assert plan_call(PROVIDERS, route, call.model, by_model=True, default_retries=3).rescues is False


def test_presigned_query_is_signed_and_masked():
    flow = make_flow("/model/m/invoke?X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok&x=1", {})
    assert is_signed(flow.request, client_key(flow.request))
    assert mask_url(flow.request.path) == "/model/m/invoke?X-Amz-Signature=***&X-Amz-Security-Token=***&x=1"
    bearer = make_flow("/v1/chat/completions", {}, headers={"Authorization": "Bearer x"}).request
    assert not is_signed(bearer, client_key(bearer))
    # A SigV4 header that names no credential is still a signature, and is kept whole as the key.
    odd = make_flow("/model/m/invoke", {}, headers={"Authorization": "aws4-hmac-sha256 Signature=ab"}).request
    assert client_key(odd) == "aws4-hmac-sha256 Signature=ab" and is_signed(odd, client_key(odd))


def test_bedrock_local_errors_use_the_aws_shape():
    response = local_response(apis.BEDROCK_CONVERSE, "anthropic", 429, "slow down")
    assert json.loads(response.content) == {"message": "slow down"}
    response = local_response(apis.VERTEX_ANTHROPIC, "gemini", 401, "no key")
    assert json.loads(response.content)["type"] == "error"


# --- JSON parsers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("api", "body", "expected", "model"), [
    (apis.BEDROCK_CONVERSE, T.CONVERSE_JSON, T.CONVERSE_USAGE, None),
    (apis.BEDROCK_INVOKE, T.INVOKE_JSON, T.INVOKE_USAGE, None),
    (apis.VERTEX_ANTHROPIC, T.VERTEX_RAW_JSON, T.VERTEX_RAW_USAGE, "claude-sonnet-4-20250514"),
    (apis.GEMINI_GENERATE, T.VERTEX_GEMINI_JSON, T.VERTEX_GEMINI_USAGE, "gemini-2.5-flash"),
    (apis.OPENAI_CHAT, T.AZURE_CHAT_JSON, T.AZURE_CHAT_USAGE, "gpt-4o-2024-11-20"),
    (apis.OPENAI_CHAT, T.XAI_CHAT_JSON, T.XAI_CHAT_USAGE, "grok-code-fast-1"),
    (apis.OPENAI_RESPONSES, T.XAI_RESPONSES_JSON, T.XAI_RESPONSES_USAGE, "grok-4-0709"),
])
def test_json_usage(api, body, expected, model):
    usage, response_model = json_usage(api, body)
    assert usage_dict(usage, expected) == expected
    assert response_model == model


def test_converse_cache_details_give_the_one_hour_writes():
    body = {**T.CONVERSE_JSON, "usage": {**T.CONVERSE_JSON["usage"], "cacheDetails": [
        {"ttl": "1h", "inputTokens": 150}, {"ttl": "5m", "inputTokens": 50}]}}
    assert json_usage(apis.BEDROCK_CONVERSE, body)[0].cache_write_1h_tokens == 150


@pytest.mark.parametrize("usage", [
    {"inputTokens": -1, "outputTokens": 3}, {"inputTokens": "7", "outputTokens": 3},
    {"inputTokens": 5, "outputTokens": 3, "cacheReadInputTokens": "x"}, None, [], {"outputTokens": 1e400},
])
def test_converse_usage_garbage_is_unknown_never_negative(usage):
    result, _ = json_usage(apis.BEDROCK_CONVERSE, {"usage": usage})
    assert result.input_tokens is None or result.input_tokens >= 0
    assert result.input_tokens is None  # every case above garbles the input side


def test_invoke_json_of_other_models():
    llama = {"generation": "hi", "prompt_token_count": 11, "generation_token_count": 4, "stop_reason": "stop"}
    assert usage_dict(json_usage(apis.BEDROCK_INVOKE, llama)[0], {"input_tokens": 0, "output_tokens": 0}) == {
        "input_tokens": 11, "output_tokens": 4}
    nova = {"output": {}, "usage": {"inputTokens": 8, "outputTokens": 2, "totalTokens": 10}}
    assert json_usage(apis.BEDROCK_INVOKE, nova)[0].input_tokens == 8


# --- streams -----------------------------------------------------------------------------------

def meter_for(api: str, content_type: str) -> StreamMeter:
    parser = stream_parser(api)
    assert parser is not None
    return StreamMeter(parser, decoder_for(content_type))


def run(meter: StreamMeter, data: bytes, cuts: list[int]) -> bytes:
    out, last = [], 0
    for cut in [*cuts, len(data)]:
        piece = data[last:cut]
        if piece:
            out.append(meter(piece))
        last = cut
    out.append(meter(b""))
    return b"".join(out)


EVENTSTREAM = "application/vnd.amazon.eventstream"
STREAMS = [
    (apis.BEDROCK_CONVERSE, EVENTSTREAM, T.CONVERSE_STREAM, T.CONVERSE_STREAM_USAGE),
    (apis.BEDROCK_INVOKE, EVENTSTREAM, T.INVOKE_STREAM, T.INVOKE_STREAM_USAGE),
    (apis.BEDROCK_INVOKE, EVENTSTREAM, T.LLAMA_STREAM, T.LLAMA_STREAM_USAGE),
    (apis.VERTEX_ANTHROPIC, "text/event-stream", T.VERTEX_RAW_SSE, T.VERTEX_RAW_SSE_USAGE),
    (apis.GEMINI_GENERATE, "text/event-stream", T.VERTEX_GEMINI_SSE, T.VERTEX_GEMINI_SSE_USAGE),
    (apis.OPENAI_CHAT, "text/event-stream", T.AZURE_CHAT_SSE, T.AZURE_CHAT_SSE_USAGE),
]


@pytest.mark.parametrize(("api", "content_type", "data", "expected"), STREAMS)
def test_stream_usage_whole(api, content_type, data, expected):
    meter = meter_for(api, content_type)
    assert run(meter, data, []) == data
    assert usage_dict(meter.parser.usage, expected) == expected
    assert meter.parser.complete and meter.meter_error is None and meter.parser.error is None


@pytest.mark.parametrize(("api", "data", "expected"), [(s[0], s[2], s[3]) for s in STREAMS[:3]])
def test_event_stream_split_at_every_byte(api, data, expected):
    for cut in range(1, len(data)):
        meter = meter_for(api, EVENTSTREAM)
        assert run(meter, data, [cut]) == data
        assert usage_dict(meter.parser.usage, expected) == expected, cut
    meter = meter_for(api, EVENTSTREAM)
    assert run(meter, data, list(range(1, len(data)))) == data  # one byte at a time
    assert usage_dict(meter.parser.usage, expected) == expected


def test_azure_stream_takes_the_model_from_a_chunk_that_names_one():
    meter = meter_for(apis.OPENAI_CHAT, "text/event-stream")
    run(meter, T.AZURE_CHAT_SSE, [])
    assert meter.parser.response_model == "gpt-4o-2024-11-20"  # not the filter-results chunk's ""


def test_converse_stream_rebuilds_the_converse_response():
    meter = meter_for(apis.BEDROCK_CONVERSE, EVENTSTREAM)
    run(meter, T.CONVERSE_STREAM, [])
    body = meter.parser.body()
    assert body["output"]["message"]["content"] == [
        {"text": "Hello from Bedrock."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}]
    assert body["stopReason"] == "tool_use" and body["usage"]["inputTokens"] == 50


def test_invoke_stream_rebuilds_the_message_and_prices_by_path():
    meter = meter_for(apis.BEDROCK_INVOKE, EVENTSTREAM)
    run(meter, T.INVOKE_STREAM, [])
    assert meter.parser.body()["content"] == [{"type": "text", "text": "Hello there"}]
    assert meter.parser.response_model is None


@pytest.mark.parametrize("corrupt_at", ["prelude", "payload", "length"])
def test_corrupt_frame_stops_metering_and_leaves_usage_unknown(corrupt_at):
    data = bytearray(T.CONVERSE_STREAM)
    first = int.from_bytes(data[:4], "big")
    if corrupt_at == "prelude":
        data[first + 1] ^= 0x40  # the second frame's total length: prelude CRC fails
    elif corrupt_at == "payload":
        data[len(data) - 10] ^= 0x01  # inside the metadata payload: message CRC fails
    else:
        # a frame claiming to be larger than any frame may be, with a valid prelude CRC
        prelude = (1 << 30).to_bytes(4, "big") + (0).to_bytes(4, "big")
        data[first:first + 12] = prelude + zlib.crc32(prelude).to_bytes(4, "big")
    meter = meter_for(apis.BEDROCK_CONVERSE, EVENTSTREAM)
    assert run(meter, bytes(data), [7, 100]) == bytes(data)  # the client still gets every byte
    assert meter.parser.usage == Usage()
    assert meter.meter_error is not None and "event stream" in meter.meter_error


def test_stream_exceptions_are_the_calls_error():
    data = T.event("messageStart", {"role": "assistant"}) + T.exception(
        "throttlingException", "Too many tokens, please wait")
    meter = meter_for(apis.BEDROCK_CONVERSE, EVENTSTREAM)
    run(meter, data, [])
    assert meter.parser.error == "throttlingException: Too many tokens, please wait"
    meter = meter_for(apis.BEDROCK_INVOKE, EVENTSTREAM)
    run(meter, T.exception("modelStreamErrorException", "boom"), [])
    assert meter.parser.error == "modelStreamErrorException: boom"


def test_error_message_type_carries_its_message_in_headers():
    frame = encode({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}, b"")
    events = EventStreamDecoder().feed(frame)
    assert [(e.name, e.data) for e in events] == [("error:InternalFailure", "oops")]


def test_header_types_are_all_read():
    block = (b"\x01a\x00" + b"\x01b\x01" + b"\x01c\x02\x05" + b"\x01d\x03\x00\x01" + b"\x01e\x04" + b"\x00" * 4
             + b"\x01f\x05" + b"\x00" * 8 + b"\x01g\x06\x00\x02zz" + b"\x01h\x07\x00\x02hi"
             + b"\x01i\x08" + b"\x00" * 8 + b"\x01j\x09" + b"\x00" * 16)
    headers = parse_headers(block)
    assert list(headers) == list("abcdefghij") and headers["h"] == "hi"


def test_truncated_stream_keeps_what_came_before():
    data = T.INVOKE_STREAM[:-30]  # the last frame (message_stop) is cut short
    meter = meter_for(apis.BEDROCK_INVOKE, EVENTSTREAM)
    assert run(meter, data, []) == data
    assert meter.meter_error is None and not meter.parser.complete
    assert meter.parser.usage.output_tokens == 9


# --- rows and prices -----------------------------------------------------------------------------

def make_flow(path: str, body: bytes | dict | None = None, *, host: str = "localhost", port: int = 8080,
              headers: dict[str, str] | None = None):
    content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    fields = [(b"host", host.encode()), (b"content-type", b"application/json"),
              (b"accept-encoding", b"gzip, deflate"), (b"content-length", str(len(content)).encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    req = tutils.treq(method=b"POST", scheme=b"https", host=host, port=port, authority=b"",
                      path=path.encode(), headers=Headers(fields), content=content)
    return tflow.tflow(req=req)


def route_of(flow):
    request = flow.request
    route = route_request(PROVIDERS, reverse=False, scheme=request.scheme, host=request.host, port=request.port,
                          path=request.path)
    assert route is not None
    return route


PRICER = Pricer(PriceBook({}))
TS = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(("provider", "response_model", "model", "usage", "cost"), [
    # Bedrock regional Sonnet 4: 3 / 0.30 cache read / 3.75 cache write / 15 per 1M tokens
    ("bedrock", None, T.BEDROCK_MODEL, Usage(1320, 35, 1000, 200),
     (Decimal(120) * 3 + Decimal(1000) * Decimal("0.3") + Decimal(200) * Decimal("3.75") + 35 * 15) / 10**6),
    ("bedrock", None, "anthropic.claude-sonnet-4-20250514-v1:0", Usage(14, 5), Decimal(14 * 3 + 5 * 15) / 10**6),
    # Global Sonnet 4.5 costs less than the regional profile
    ("bedrock", None, "global.anthropic.claude-sonnet-4-5-20250929-v1:0", Usage(1000, 100),
     Decimal(1000 * 3 + 100 * 15) / 10**6),
    ("bedrock", None, "us.anthropic.claude-sonnet-4-5-20250929-v1:0", Usage(1000, 100),
     (Decimal(1000) * Decimal("3.3") + Decimal(100) * Decimal("16.5")) / 10**6),
    ("vertex", "claude-sonnet-4-20250514", T.VERTEX_CLAUDE, Usage(530, 12, 500, 0),
     (Decimal(30) * 3 + Decimal(500) * Decimal("0.3") + 12 * 15) / 10**6),
    ("vertex", "gemini-2.5-flash", "gemini-2.5-flash", Usage(9, 21, reasoning_tokens=16),
     (Decimal(9) * Decimal("0.3") + Decimal(21) * Decimal("2.5")) / 10**6),
    ("azure", "gpt-4o-2024-11-20", "my-gpt4o", Usage(1200, 10, 1024),
     (Decimal(176) * Decimal("2.5") + Decimal(1024) * Decimal("1.25") + 10 * 10) / 10**6),
    ("xai", "grok-code-fast-1", "grok-code-fast-1", Usage(200, 150, 128, reasoning_tokens=120),
     (Decimal(72) * Decimal("0.2") + Decimal(128) * Decimal("0.02") + Decimal(150) * Decimal("1.5")) / 10**6),
])
def test_prices(provider, response_model, model, usage, cost):
    assert PRICER.usage(provider, response_model, model, usage, ts=TS) == cost


def test_close_call_of_a_converse_json_answer():
    flow = make_flow(f"/model/{T.BEDROCK_MODEL_PATH}/converse", {"messages": []},
                     host="bedrock-runtime.us-east-1.amazonaws.com", port=443, headers={"Authorization": SIGV4})
    call = open_call(flow, route_of(flow))
    flow.response = tutils.tresp(content=json.dumps(T.CONVERSE_JSON).encode())
    record, outcome = close_call(flow, call, log_bodies=True)
    assert (record.provider, record.api, record.model, record.response_model) == (
        "bedrock", apis.BEDROCK_CONVERSE, T.BEDROCK_MODEL, None)
    assert (record.input_tokens, record.output_tokens, record.cached_tokens, record.cache_write_tokens) == (
        1320, 35, 1000, 200)


@pytest.mark.parametrize(("body", "expected"), [
    ({"message": "The security token included in the request is invalid."},
     "The security token included in the request is invalid."),
    ({"Message": "User is not authorized"}, "User is not authorized"),
    ({"message": 7}, None), ({"message": "x", "error": ""}, None), ({"ok": True}, None),
])
def test_aws_error_bodies(body, expected):
    from llm_proxy.usage import error_text
    assert error_text(body) == expected


def test_invoke_of_a_model_we_do_not_read_takes_the_count_headers():
    flow = make_flow("/model/amazon.titan-text-express-v1/invoke", {"inputText": "hi"},
                     host="bedrock-runtime.us-east-1.amazonaws.com", port=443, headers={"Authorization": SIGV4})
    call = open_call(flow, route_of(flow))
    flow.response = tutils.tresp(content=b'{"inputTextTokenCount": 3, "results": [{"tokenCount": 9}]}')
    flow.response.headers["X-Amzn-Bedrock-Input-Token-Count"] = "3"
    flow.response.headers["X-Amzn-Bedrock-Output-Token-Count"] = "9"
    record, _ = close_call(flow, call, log_bodies=False)
    assert (record.model, record.input_tokens, record.output_tokens) == ("amazon.titan-text-express-v1", 3, 9)
    flow.response.headers["X-Amzn-Bedrock-Output-Token-Count"] = "-9"
    record, _ = close_call(flow, open_call(flow, route_of(flow)), log_bodies=False)
    assert (record.input_tokens, record.output_tokens) == (3, None)


@pytest.mark.parametrize(("provider", "model"), [
    ("bedrock", "anthropic.claude-opus-4-5-20251101-v1:0"),
    ("bedrock", "global.anthropic.claude-opus-4-5-20251101-v1:0"),
    ("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
    ("bedrock", "apac.anthropic.claude-sonnet-4-20250514-v1:0"),
    ("bedrock", "us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
    ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ("vertex", "claude-opus-4-1@20250805"),
    ("vertex", "claude-haiku-4-5@20251001"),
    ("vertex", "claude-sonnet-4-5@20250929"),
    ("vertex", "gemini-2.5-pro"),
    ("azure", "gpt-4.1-mini"),
    ("xai", "grok-4-fast-reasoning"),
])
def test_agents_models_have_a_price(provider, model):
    cost = PRICER.usage(provider, None, model, Usage(1000, 100), ts=TS)
    assert cost is not None and cost > 0



@pytest.mark.parametrize(("query", "injected"), [
    ("?api-version=2024-02-01", False), ("?api-version=2024-06-01", False),
    ("?api-version=2024-08-01-preview", True), ("?api-version=2024-10-21", True),
    ("?api-version=2025-04-01-preview", True), ("", True),
])
def test_azure_stream_usage_is_asked_for_only_where_the_api_version_accepts_it(query, injected):
    path = ("/openai/v1/chat/completions" if not query
            else f"/openai/deployments/{T.AZURE_DEPLOYMENT}/chat/completions{query}")
    flow = make_flow(path, {"messages": [], "stream": True}, host="res.openai.azure.com")
    call = open_call(flow, route_of(flow))
    assert call.strip_usage_chunk is injected
    assert ("stream_options" in json.loads(flow.request.content)) is injected
