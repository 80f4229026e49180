"""Local answers in each provider's own error shape (PROVIDER_USAGE.md section 9)."""

from __future__ import annotations

import json

import pytest

from llm_proxy import apis
from llm_proxy.errors import error_body, family, local_response

MSG = "key 'alice' is over its limit of 2 requests per minute"


@pytest.mark.parametrize(("status", "kind"), [
    (401, "invalid_request_error"), (403, "permission_error"), (429, "rate_limit_exceeded"), (503, "server_error"),
])
def test_openai_shape(status, kind):
    response = local_response(apis.OPENAI_CHAT, "openai", status, MSG, code="some_code")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-llm-proxy"] == "local"
    assert json.loads(response.content) == {"error": {"message": MSG, "type": kind, "param": None, "code": "some_code"}}


def test_openai_shape_without_code():
    assert error_body("openai", 401, "unknown API key") == {
        "error": {"message": "unknown API key", "type": "invalid_request_error", "param": None, "code": None}}


@pytest.mark.parametrize(("status", "kind"), [
    (401, "authentication_error"), (403, "permission_error"), (429, "rate_limit_error"), (503, "overloaded_error"),
    (500, "api_error"), (529, "overloaded_error"),
])
def test_anthropic_shape(status, kind):
    response = local_response(apis.ANTHROPIC_MESSAGES, "anthropic", status, MSG, code="ignored")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {"type": "error", "error": {"type": kind, "message": MSG}}


@pytest.mark.parametrize(("status", "grpc"), [
    (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"),
    (500, "INTERNAL"),
])
def test_gemini_shape(status, grpc):
    response = local_response(apis.GEMINI_GENERATE, "gemini", status, MSG, code="ignored")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {"error": {"code": status, "message": MSG, "status": grpc}}


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_ollama_shape(status):
    response = local_response(apis.OLLAMA_CHAT, "ollama", status, MSG, code="ignored")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {"error": MSG}


def test_unlisted_statuses_fall_back_by_class():
    assert error_body("openai", 418, "m")["error"]["type"] == "invalid_request_error"
    assert error_body("openai", 502, "m")["error"]["type"] == "server_error"
    assert error_body("anthropic", 418, "m")["error"]["type"] == "api_error"
    assert error_body("gemini", 418, "m")["error"]["status"] == "UNKNOWN"


def test_headers_are_passed_through():
    headers = {"retry-after": "40", "retry-after-ms": "40000", "x-ratelimit-limit-requests": "2",
               "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "40.000s"}
    response = local_response(apis.OPENAI_CHAT, "openai", 429, MSG, code="rate_limit_exceeded", headers=headers)
    for name, value in headers.items():
        assert response.headers[name] == value
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


def test_family_follows_the_api_then_the_provider_format():
    assert family(apis.OPENAI_CHAT, "anthropic") == "openai"  # an OpenAI-compatible endpoint of Anthropic
    assert family(apis.OPENAI_RESPONSES, "openai") == "openai"
    assert family(apis.ANTHROPIC_MESSAGES, "openai") == "anthropic"
    assert family(apis.ANTHROPIC_COUNT_TOKENS, "anthropic") == "anthropic"
    assert family(apis.GEMINI_GENERATE, "gemini") == "gemini"
    assert family(apis.OLLAMA_EMBED, "ollama") == "ollama"
    assert family(apis.OTHER, "gemini") == "gemini"
    assert family(apis.OTHER, "ollama") == "ollama"


def test_other_api_on_anthropic_provider_gets_anthropic_shape():
    response = local_response(apis.OTHER, "anthropic", 401, "unknown API key")
    assert json.loads(response.content) == {
        "type": "error", "error": {"type": "authentication_error", "message": "unknown API key"}}
