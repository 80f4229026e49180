"""xAI, Azure OpenAI, AWS Bedrock and Vertex AI through a real mitmdump, rows exact in PostgreSQL.

Reverse mode (path prefixes /xai, /azure, /vertex) with the providers' own SDKs: openai's
OpenAI and AzureOpenAI, google-genai in Vertex mode, anthropic's AnthropicVertex. Regular
mode (the client's HTTP proxy) for Bedrock, whose requests are SigV4-signed: the fake
upstream must receive each one byte for byte as the client sent it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from google.oauth2.credentials import Credentials

from llm_proxy import apis
from llm_proxy.redact import fingerprint
from tests.e2e.conftest import Proxy, Rows
from tests.fakes.cloud import CloudUpstream
from tests.unit import cloud_transcripts as T

M = Decimal(1_000_000)


def _providers(path: Path, upstream: str, *, regular_bedrock_host: str | None = None) -> Path:
    bedrock_hosts = f'"{regular_bedrock_host}"' if regular_bedrock_host else '"bedrock.invalid"'
    path.write_text(f'''
[providers.xai]
base_url = "{upstream}"
format = "openai"
hosts = ["xai.invalid"]

[providers.azure]
base_url = "https://your-resource.openai.azure.com"
base_url_env = "AZURE_OPENAI_ENDPOINT"
format = "openai"
hosts = ["*.openai.azure.com"]
key_header = "api-key"
openai_base = "/openai/v1"

[providers.vertex]
base_url = "https://aiplatform.googleapis.com"
base_url_env = "VERTEX_BASE_URL"
format = "gemini"
hosts = ["aiplatform.googleapis.com", "*-aiplatform.googleapis.com"]

[providers.bedrock]
base_url = "{upstream}"
format = "anthropic"
hosts = [{bedrock_hosts}]
''')
    return path


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudUpstream]:
    with CloudUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def reverse(tmp_path_factory: pytest.TempPathFactory, cloud: CloudUpstream, pg_url: str,
            pg_table: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("cloud-reverse")
    proxy = Proxy(
        ["--mode", f"reverse:{cloud.url}@0", "--set", f"llm_providers={_providers(tmp / 'p.toml', cloud.url)}",
         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"],
        confdir=tmp / "conf", env={"AZURE_OPENAI_ENDPOINT": cloud.url, "VERTEX_BASE_URL": cloud.url},
    ).start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def regular(tmp_path_factory: pytest.TempPathFactory, cloud: CloudUpstream, pg_url: str,
            pg_table: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("cloud-regular")
    providers = _providers(tmp / "p.toml", cloud.url, regular_bedrock_host=f"127.0.0.1:{cloud.port}")
    proxy = Proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}", "--set", f"llm_db={pg_url}",
                   "--set", f"llm_table={pg_table}"], confdir=tmp / "conf").start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def rows(pg_url: str, pg_table: str) -> Rows:
    return Rows(pg_url, pg_table)


def check_row(row: dict, **expected: object) -> None:
    got = {k: row[k] for k in expected}
    assert got == expected
    assert row["error"] is None and row["status"] == 200
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]


# --- xAI ---------------------------------------------------------------------------------------

def test_xai_chat_and_responses_with_the_openai_sdk(reverse: Proxy, rows: Rows) -> None:
    key = f"xai-{secrets.token_hex(8)}"
    client = openai.OpenAI(base_url=f"{reverse.url}/xai/v1", api_key=key, max_retries=0)
    chat = client.chat.completions.create(model="grok-code-fast-1", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "Hello from Grok."
    response = client.responses.create(model="grok-4", input="hi")
    assert response.output_text == "Hi from Grok."
    first, second = rows.wait(key, 2)
    check_row(first, provider="xai", api=apis.OPENAI_CHAT, model="grok-code-fast-1",
              response_model="grok-code-fast-1", input_tokens=200, output_tokens=150, cached_tokens=128,
              reasoning_tokens=120, streaming=False, path="/xai/v1/chat/completions",
              cost_usd=(72 * Decimal("0.2") + 128 * Decimal("0.02") + 150 * Decimal("1.5")) / M)
    check_row(second, provider="xai", api=apis.OPENAI_RESPONSES, model="grok-4", response_model="grok-4-0709",
              input_tokens=50, output_tokens=40, cached_tokens=10, reasoning_tokens=30,
              cost_usd=(40 * 3 + 10 * Decimal("0.75") + 40 * 15) / M)


# --- Azure OpenAI ------------------------------------------------------------------------------

def test_azure_deployments_with_the_azure_openai_client(reverse: Proxy, cloud: CloudUpstream, rows: Rows) -> None:
    key = f"azure-{secrets.token_hex(8)}"
    client = openai.AzureOpenAI(azure_endpoint=f"{reverse.url}/azure", api_key=key, api_version="2024-10-21",
                                max_retries=0)
    chat = client.chat.completions.create(model=T.AZURE_DEPLOYMENT, messages=[{"role": "user", "content": "hi"}])
    assert chat.usage is not None and chat.usage.prompt_tokens == 1200
    upstream = cloud.requests[-1]
    assert upstream.target == f"/openai/deployments/{T.AZURE_DEPLOYMENT}/chat/completions?api-version=2024-10-21"
    assert f"api-key: {key}".encode() in upstream.header_lines  # the client's own key, passed on
    stream = client.chat.completions.create(model=T.AZURE_DEPLOYMENT, stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert all(c.usage is None for c in chunks)  # the usage chunk the proxy asked for is not shown
    assert cloud.requests[-1].json()["stream_options"] == {"include_usage": True}
    embedding = client.embeddings.create(model="emb-small", input="hi")
    assert embedding.data[0].embedding == [0.1, -0.2]
    chat_row, stream_row, embed_row = rows.wait(key, 3)
    check_row(chat_row, provider="azure", api=apis.OPENAI_CHAT, model=T.AZURE_DEPLOYMENT,
              response_model="gpt-4o-2024-11-20", input_tokens=1200, output_tokens=10, cached_tokens=1024,
              key_id=fingerprint(key),
              path=f"/azure/openai/deployments/{T.AZURE_DEPLOYMENT}/chat/completions?api-version=2024-10-21",
              upstream_url=f"{cloud.url}/openai/deployments/{T.AZURE_DEPLOYMENT}/chat/completions"
                           "?api-version=2024-10-21",
              cost_usd=(176 * Decimal("2.5") + 1024 * Decimal("1.25") + 10 * 10) / M)
    check_row(stream_row, api=apis.OPENAI_CHAT, model=T.AZURE_DEPLOYMENT, streaming=True, input_tokens=20,
              output_tokens=3, cost_usd=(20 * Decimal("2.5") + 3 * 10) / M)
    check_row(embed_row, api=apis.OPENAI_EMBEDDINGS, model="emb-small", response_model="text-embedding-3-small",
              input_tokens=6, output_tokens=0, cost_usd=6 * Decimal("0.02") / M)


# --- Vertex AI ---------------------------------------------------------------------------------

def test_vertex_gemini_with_google_genai(reverse: Proxy, rows: Rows) -> None:
    token = f"ya29.{secrets.token_hex(8)}"
    client = genai.Client(vertexai=True, project="my-project", location="us-central1",
                          credentials=Credentials(token=token),
                          http_options=genai_types.HttpOptions(base_url=f"{reverse.url}/vertex/", api_version="v1"))
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert reply.text == "Hello from Vertex."
    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"))
    assert text == "Hello"
    json_row, stream_row = rows.wait(token, 2)
    check_row(json_row, provider="vertex", api=apis.GEMINI_GENERATE, model="gemini-2.5-flash",
              response_model="gemini-2.5-flash", input_tokens=9, output_tokens=21, reasoning_tokens=16,
              streaming=False, path=f"/vertex{T.VERTEX_PROJECT_PATH}/gemini-2.5-flash:generateContent",
              cost_usd=(9 * Decimal("0.3") + 21 * Decimal("2.5")) / M)
    check_row(stream_row, api=apis.GEMINI_GENERATE, model="gemini-2.5-flash", streaming=True, input_tokens=7,
              output_tokens=2, cost_usd=(7 * Decimal("0.3") + 2 * Decimal("2.5")) / M)


def test_vertex_claude_raw_predict_with_anthropic_vertex(reverse: Proxy, cloud: CloudUpstream, rows: Rows) -> None:
    token = f"ya29.{secrets.token_hex(8)}"
    client = anthropic.AnthropicVertex(region="us-east5", project_id="my-project", access_token=token,
                                       base_url=f"{reverse.url}/vertex/v1", max_retries=0)
    message = client.messages.create(model=T.VERTEX_CLAUDE, max_tokens=64,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.usage.cache_read_input_tokens == 500
    body = cloud.requests[-1].json()
    assert "anthropic_version" in body and "model" not in body  # Vertex: the model is in the path
    with client.messages.stream(model=T.VERTEX_CLAUDE, max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.get_final_text() == "Hi"
    json_row, stream_row = rows.wait(token, 2)
    check_row(json_row, provider="vertex", api=apis.VERTEX_ANTHROPIC, model=T.VERTEX_CLAUDE,
              response_model="claude-sonnet-4-20250514", input_tokens=530, output_tokens=12, cached_tokens=500,
              cache_write_tokens=0, streaming=False,
              cost_usd=(30 * 3 + 500 * Decimal("0.3") + 12 * 15) / M)
    check_row(stream_row, api=apis.VERTEX_ANTHROPIC, model=T.VERTEX_CLAUDE, streaming=True, input_tokens=40,
              output_tokens=6, cost_usd=(40 * 3 + 6 * 15) / M)
    assert stream_row["response_body"]["content"] == [{"type": "text", "text": "Hi"}]


# --- Bedrock, regular mode, signed -------------------------------------------------------------

def signed_request(client: httpx.Client, cloud: CloudUpstream, operation: str, body: bytes,
                   access_key: str) -> httpx.Request:
    """What botocore would send: SigV4 headers, an encoded model id, names in its own case and order."""
    url = f"{cloud.url}/model/{T.BEDROCK_MODEL_PATH}/{operation}"
    signature = secrets.token_hex(32)
    headers = [
        ("X-Amz-Date", "20261130T050000Z"),
        ("Accept", "application/vnd.amazon.eventstream" if "stream" in operation else "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "Boto3/1.40.0 md/Botocore#1.40.0 ua/2.1 os/linux"),
        ("Accept-Encoding", "gzip"),  # the proxy would otherwise rewrite this one
        ("X-Amz-Content-SHA256", secrets.token_hex(32)),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={access_key}/20261130/us-east-1/bedrock/aws4_request, "
                          f"SignedHeaders=accept;content-type;host;x-amz-content-sha256;x-amz-date, "
                          f"Signature={signature}"),
    ]
    return client.build_request("POST", url, headers=headers, content=body)


BEDROCK_CASES = [
    ("converse-stream", b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}], '
                        b'"inferenceConfig": {"maxTokens": 64},  "stream": false}',
     T.CONVERSE_STREAM, apis.BEDROCK_CONVERSE, dict(input_tokens=350, output_tokens=22, cached_tokens=300,
                                                   cache_write_tokens=0),
     (50 * 3 + 300 * Decimal("0.3") + 22 * 15) / M),
    ("invoke-with-response-stream", b'{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,\n'
                                    b' "messages": [{"role": "user", "content": "hi"}]}',
     T.INVOKE_STREAM, apis.BEDROCK_INVOKE, dict(input_tokens=2125, output_tokens=9, cached_tokens=2000,
                                               cache_write_tokens=100),
     (25 * 3 + 2000 * Decimal("0.3") + 100 * Decimal("3.75") + 9 * 15) / M),
    ("converse", b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}', json.dumps(T.CONVERSE_JSON).encode(),
     apis.BEDROCK_CONVERSE, dict(input_tokens=1320, output_tokens=35, cached_tokens=1000, cache_write_tokens=200),
     (120 * 3 + 1000 * Decimal("0.3") + 200 * Decimal("3.75") + 35 * 15) / M),
]


@pytest.mark.parametrize(("operation", "body", "answer", "api", "counts", "cost"), BEDROCK_CASES,
                         ids=[c[0] for c in BEDROCK_CASES])
def test_bedrock_signed_request_reaches_upstream_unchanged_and_is_metered(
        regular: Proxy, cloud: CloudUpstream, rows: Rows, operation: str, body: bytes, answer: bytes, api: str,
        counts: dict[str, int], cost: Decimal) -> None:
    access_key = f"AKIA{secrets.token_hex(8).upper()}"
    with httpx.Client(proxy=regular.url, timeout=30) as client:
        request = signed_request(client, cloud, operation, body, access_key)
        response = client.send(request, stream=True)
        try:
            assert response.status_code == 200
            received = b"".join(response.iter_raw())
        finally:
            response.close()
    assert received == answer  # the client reads the stream exactly as Bedrock sent it
    upstream = next(r for r in reversed(cloud.requests) if access_key.encode() in b"".join(r.header_lines))
    assert upstream.request_line == f"POST /model/{T.BEDROCK_MODEL_PATH}/{operation} HTTP/1.1".encode()
    assert upstream.header_lines == [name + b": " + value for name, value in request.headers.raw]
    assert upstream.body == body
    [row] = rows.wait_for("key_id = %s", (fingerprint(f"aws-sigv4:{access_key}"),))
    check_row(row, provider="bedrock", api=api, model=T.BEDROCK_MODEL, response_model=None,
              streaming=operation.endswith("stream"), path=f"/model/{T.BEDROCK_MODEL_PATH}/{operation}",
              cost_usd=cost, **counts)
    assert row["request_body"] == json.loads(body)
    if operation == "converse-stream":
        assert row["response_body"]["stopReason"] == "tool_use"
        assert row["response_body"]["output"]["message"]["content"][0] == {"text": "Hello from Bedrock."}


def test_bedrock_api_key_through_the_reverse_proxy(reverse: Proxy, cloud: CloudUpstream, rows: Rows) -> None:
    """A Bedrock API key is a plain Bearer token (no signature), so /bedrock/... works in reverse mode."""
    token = f"ABSK{secrets.token_hex(12)}"
    body = b'{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": []}'
    response = httpx.post(f"{reverse.url}/bedrock/model/{T.BEDROCK_MODEL_PATH}/invoke", content=body,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["usage"]["input_tokens"] == 14
    assert cloud.requests[-1].target == f"/model/{T.BEDROCK_MODEL_PATH}/invoke"
    [row] = rows.wait(token)
    check_row(row, provider="bedrock", api=apis.BEDROCK_INVOKE, model=T.BEDROCK_MODEL, response_model=None,
              input_tokens=14, output_tokens=5, streaming=False, cost_usd=Decimal(14 * 3 + 5 * 15) / M)


def test_bedrock_corrupt_stream_reaches_the_client_whole_and_leaves_usage_unknown(
        regular: Proxy, cloud: CloudUpstream, rows: Rows) -> None:
    access_key = f"AKIA{secrets.token_hex(8).upper()}"
    with httpx.Client(proxy=regular.url, timeout=30) as client:
        request = signed_request(client, cloud, "converse-stream", b"{}", access_key)
        request.url = request.url.copy_with(path="/model/corrupt-model/converse-stream")
        response = client.send(request, stream=True)
        try:
            received = b"".join(response.iter_raw())
        finally:
            response.close()
    assert len(received) == len(T.CONVERSE_STREAM) and received != T.CONVERSE_STREAM  # as sent, flipped byte too
    [row] = rows.wait_for("key_id = %s", (fingerprint(f"aws-sigv4:{access_key}"),))
    assert (row["status"], row["model"], row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
        200, "corrupt-model", None, None, None)
    assert "message CRC mismatch" in row["error"]


# --- the shipped providers.toml's wildcard hosts, as a regular-mode client reaches them ----------

@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory, cloud: CloudUpstream, pg_url: str,
            pg_table: str) -> Iterator[Proxy]:
    """The shipped providers.toml, in upstream mode: clients use the proxy as their HTTP proxy and
    name the real hosts (res.openai.azure.com, us-east5-aiplatform.googleapis.com, ...); the proxy
    matches them by providers.toml's hosts and hands each request to the fake as its next proxy,
    so no DNS is needed."""
    tmp = tmp_path_factory.mktemp("cloud-chained")
    proxy = Proxy(["--mode", f"upstream:{cloud.url}@0", "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"],
                  confdir=tmp / "conf").start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy
    proxy.stop()


def test_shipped_wildcard_hosts_meter_azure_vertex_and_bedrock(chained: Proxy, cloud: CloudUpstream,
                                                                rows: Rows) -> None:
    key = f"azure-{secrets.token_hex(8)}"
    with httpx.Client(proxy=chained.url, timeout=30) as http_client:
        azure = openai.AzureOpenAI(azure_endpoint="http://my-resource.openai.azure.com", api_key=key,
                                   api_version="2024-10-21", max_retries=0, http_client=http_client)
        azure.chat.completions.create(model=T.AZURE_DEPLOYMENT, messages=[{"role": "user", "content": "hi"}])
        token = f"ya29.{secrets.token_hex(8)}"
        with httpx2.Client(proxy=chained.url, timeout=30) as anthropic_http:  # the anthropic SDK's own httpx
            vertex = anthropic.AnthropicVertex(region="us-east5", project_id="my-project", access_token=token,
                                               base_url="http://us-east5-aiplatform.googleapis.com/v1",
                                               max_retries=0, http_client=anthropic_http)
            vertex.messages.create(model=T.VERTEX_CLAUDE, max_tokens=64,
                                   messages=[{"role": "user", "content": "hi"}])
        access_key = f"AKIA{secrets.token_hex(8).upper()}"
        request = signed_request(http_client, cloud, "converse", b'{"messages": []}', access_key)
        request.url = request.url.copy_with(host="bedrock-runtime.eu-west-1.amazonaws.com", port=None)
        request.headers["Host"] = "bedrock-runtime.eu-west-1.amazonaws.com"
        assert http_client.send(request).status_code == 200
    upstream = next(r for r in reversed(cloud.requests) if access_key.encode() in b"".join(r.header_lines))
    assert upstream.header_lines == [name + b": " + value for name, value in request.headers.raw]
    [azure_row] = rows.wait(key)
    check_row(azure_row, provider="azure", model=T.AZURE_DEPLOYMENT, response_model="gpt-4o-2024-11-20",
              input_tokens=1200, cost_usd=(176 * Decimal("2.5") + 1024 * Decimal("1.25") + 10 * 10) / M)
    [vertex_row] = rows.wait(token)
    check_row(vertex_row, provider="vertex", api=apis.VERTEX_ANTHROPIC, model=T.VERTEX_CLAUDE, input_tokens=530)
    [bedrock_row] = rows.wait_for("key_id = %s", (fingerprint(f"aws-sigv4:{access_key}"),))
    check_row(bedrock_row, provider="bedrock", api=apis.BEDROCK_CONVERSE, model=T.BEDROCK_MODEL, input_tokens=1320,
              cost_usd=(120 * 3 + 1000 * Decimal("0.3") + 200 * Decimal("3.75") + 35 * 15) / M)
