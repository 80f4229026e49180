"""Routing by model, plans, fallback rewriting, breakers and the output test, as plain functions."""

from __future__ import annotations

import json

import pytest

from llm_proxy import apis
from llm_proxy.config.errors import ConfigError
from llm_proxy.config.models import ModelRoute, Target, parse_models
from llm_proxy.config.providers import Provider, Providers
from llm_proxy.rescue.attempts import carries_output
from llm_proxy.rescue.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from llm_proxy.rescue.plan import CHAT_TO_MESSAGES, MESSAGES_TO_CHAT, Plan, backoff, build_request, retry_after
from llm_proxy.routing import Route, plan_call

OPENAI = Provider("openai", "https://api.openai.com", "openai", ("api.openai.com",), "OPENAI_API_KEY",
                  openai_base="/v1")
ANTHROPIC = Provider("anthropic", "https://api.anthropic.com", "anthropic", ("api.anthropic.com",),
                     "ANTHROPIC_API_KEY", models=("claude-*",))
GROQ = Provider("groq", "https://api.groq.com", "openai", ("api.groq.com",), "GROQ_API_KEY", openai_base="/openai/v1")
GEMINI = Provider("gemini", "https://generativelanguage.googleapis.com", "gemini",
                  ("generativelanguage.googleapis.com",), "GEMINI_API_KEY", openai_base="/v1beta/openai",
                  models=("gemini-*",))
BY_NAME = {p.name: p for p in (OPENAI, ANTHROPIC, GROQ, GEMINI)}


def providers(models: dict | None = None) -> Providers:
    return Providers(BY_NAME.values(), parse_models(models or {}, BY_NAME))


# --- [models] ----------------------------------------------------------------------------

def test_parse_models_targets_fallbacks_and_retries():
    routes = parse_models({
        "fast": {"target": "groq:llama-3.3-70b", "fallbacks": ["openai:gpt-4o-mini", "anthropic"], "retries": 2},
        "local": {"target": "openai:llama3.1:8b"},
    }, BY_NAME)
    fast = routes.find("fast")
    assert fast == ModelRoute("fast", Target("groq", "llama-3.3-70b"),
                              (Target("openai", "gpt-4o-mini"), Target("anthropic")), 2)
    assert routes.find("local").target == Target("openai", "llama3.1:8b")  # ':' inside a model name
    assert str(fast.target) == "groq:llama-3.3-70b" and str(Target("anthropic")) == "anthropic"


@pytest.mark.parametrize(("table", "message"), [
    ({"m": {"target": "nope:x"}}, "unknown provider 'nope'"),
    ({"m": {"fallbacks": "openai:x"}}, "fallbacks must be a list"),
    ({"m": {"retries": 11}}, "retries must be a whole number from 0 to 10"),
    ({"m": {"retries": True}}, "retries must be a whole number"),
    ({"m": {"fallback": []}}, "unknown field(s) ['fallback']"),
    ({"m": "openai"}, "must be a table"),
    ({"m": {"target": ""}}, "a target is"),
])
def test_parse_models_errors(table, message):
    with pytest.raises(ConfigError) as error:
        parse_models(table, BY_NAME)
    assert message in str(error.value)


def test_exact_names_win_over_globs_and_the_longest_glob_wins():
    routes = parse_models({"gpt-*": {"retries": 1}, "gpt-4o*": {"retries": 2}, "gpt-4o-mini": {"retries": 3}},
                          BY_NAME)
    assert [routes.find(m).retries for m in ("gpt-4o-mini", "gpt-4o-2024", "gpt-5")] == [3, 2, 1]
    assert routes.find("claude-x") is None and routes.find(None) is None
    assert routes.find("gpt-4o-2024").retries == 2  # again, from the memo


# --- plans -------------------------------------------------------------------------------

def route(provider: Provider, api: str = apis.OPENAI_CHAT) -> Route:
    return Route(provider, api)


def test_plan_for_a_plain_call_routed_by_model():
    plan = plan_call(providers(), route(OPENAI), "claude-haiku-4-5", by_model=True, default_retries=1)
    assert plan == Plan((Target("anthropic"),), 1)
    assert plan.rescues  # a retry is a second chance
    assert plan_call(providers(), route(OPENAI), "gpt-4o", by_model=True, default_retries=0) == Plan(
        (Target("openai"),), 0)


def test_an_alias_and_its_fallbacks():
    table = {"fast": {"target": "groq:llama-3.3-70b", "fallbacks": ["groq:llama-3.3-70b", "openai:gpt-4o-mini"]}}
    plan = plan_call(providers(table), route(OPENAI), "fast", by_model=True, default_retries=0)
    assert plan.targets == (Target("groq", "llama-3.3-70b"), Target("openai", "gpt-4o-mini"))  # primary not twice


def test_no_route_when_the_target_declares_models_and_this_is_not_one():
    reason = plan_call(providers(), route(ANTHROPIC, apis.ANTHROPIC_MESSAGES), "gpt-9", by_model=True,
                       default_retries=0)
    assert reason == "no route or provider accepts model 'gpt-9'"


def test_a_prefixed_call_keeps_its_provider_but_gets_fallbacks():
    table = {"gpt-4o": {"target": "groq:x", "fallbacks": ["anthropic:claude-haiku-4-5"], "retries": 3}}
    plan = plan_call(providers(table), route(OPENAI), "gpt-4o", by_model=False, default_retries=0)
    assert plan == Plan((Target("openai"), Target("anthropic", "claude-haiku-4-5")), 3)
    same = {"fast": {"target": "openai:gpt-4o-mini"}}  # an alias to the same provider still applies
    assert plan_call(providers(same), route(OPENAI), "fast", by_model=False, default_retries=0).targets == (
        Target("openai", "gpt-4o-mini"),)


# --- fallback rewriting -------------------------------------------------------------------

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hi"}], "stream": True,
             "stream_options": {"include_usage": True}}
CLIENT_HEADERS = {"Authorization": "Bearer sk-client", "Content-Type": "application/json", "Host": "x",
                  "OpenAI-Organization": "org-1", "x-fake-scenario": "{}", "Content-Length": "99"}


def build(target: Target, provider: Provider, *, client_api=apis.OPENAI_CHAT, body=CHAT_BODY, real_key=None,
          headers=CLIENT_HEADERS, path="/v1/chat/completions", query=None):
    return build_request(client_api=client_api, method="POST", path=path, query=query or {}, headers=headers,
                         body=body, target=target, provider=provider, primary=OPENAI, requested_model="gpt-4o-mini",
                         real_key=real_key)


def test_same_format_other_provider_gets_its_path_key_and_model():
    up = build(Target("groq", "llama-3.3-70b"), GROQ, real_key="gsk-real")
    assert up.url == "https://api.groq.com/openai/v1/chat/completions" and up.translation is None
    assert up.headers["authorization"] == "Bearer gsk-real" and up.headers["openai-organization"] == "org-1"
    assert "host" not in up.headers and "content-length" not in up.headers
    assert up.headers["accept-encoding"] == "identity"
    assert json.loads(up.body)["model"] == "llama-3.3-70b"


def test_openai_chat_to_anthropic_is_translated_with_anthropic_credentials():
    up = build(Target("anthropic", "claude-haiku-4-5"), ANTHROPIC, real_key="sk-ant-real")
    assert (up.url, up.api, up.translation) == ("https://api.anthropic.com/v1/messages", apis.ANTHROPIC_MESSAGES,
                                                MESSAGES_TO_CHAT)
    assert up.headers["x-api-key"] == "sk-ant-real" and up.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in up.headers and "openai-organization" not in up.headers  # nothing of the client's
    body = json.loads(up.body)
    assert (body["model"], body["system"], body["stream"]) == ("claude-haiku-4-5", "be brief", True)


def test_anthropic_messages_to_an_openai_compatible_provider():
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    up = build(Target("gemini", "gemini-2.5-flash"), GEMINI, client_api=apis.ANTHROPIC_MESSAGES, body=body,
               headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"}, real_key="AIza-real",
               path="/v1/messages")
    assert up.url == "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    assert up.translation == CHAT_TO_MESSAGES and up.headers["authorization"] == "Bearer AIza-real"
    assert "x-api-key" not in up.headers and "anthropic-version" not in up.headers
    assert json.loads(up.body)["stream_options"] == {"include_usage": True}


def test_the_primary_provider_keeps_the_credentials_the_request_carries():
    up = build(Target("openai", "gpt-4.1-mini"), OPENAI, real_key="sk-env")
    assert up.headers["authorization"] == "Bearer sk-client"  # passthrough: the client's own key, not the env's


def test_a_provider_without_its_key_cannot_serve_and_says_why():
    assert build(Target("groq", "x"), GROQ) == "no key for provider 'groq': set GROQ_API_KEY where the proxy runs"


def test_a_shape_a_provider_cannot_serve():
    reason = build(Target("anthropic", "claude-haiku-4-5"), ANTHROPIC, client_api=apis.OPENAI_EMBEDDINGS,
                   real_key="k", path="/v1/embeddings", body={"model": "x", "input": "a"})
    assert reason == "provider 'anthropic' (anthropic) cannot serve a openai-embeddings call"


def test_gemini_native_moves_the_model_in_the_path_and_drops_the_client_key_param():
    up = build(Target("gemini", "gemini-2.5-pro"), GEMINI, client_api=apis.GEMINI_GENERATE, body={"contents": []},
               path="/v1beta/models/gemini-2.5-flash:streamGenerateContent", query={"alt": "sse", "key": "AIza-client"},
               real_key="AIza-real")
    assert up.url == ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent"
                      "?alt=sse")
    assert up.headers["x-goog-api-key"] == "AIza-real"


def test_retry_after_and_backoff():
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert backoff(0, 1.5) == 1.5
    assert all(0 <= backoff(n, None) <= min(8.0, 0.5 * 2 ** n) for n in range(8) for _ in range(20))


# --- breakers ------------------------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_then_probes_once():
    breakers, t = Breakers(failures=2, cooldown=10), Target("openai", "gpt-4o")
    breakers.failure(t, 0.0)
    assert breakers.state(t, 0.0) == CLOSED and breakers.allow(t, 0.0)
    breakers.failure(t, 1.0)
    assert breakers.state(t, 5.0) == OPEN and not breakers.allow(t, 5.0)
    assert breakers.open_targets() == ["openai:gpt-4o"]
    assert breakers.state(t, 11.0) == HALF_OPEN
    assert breakers.allow(t, 11.0) and not breakers.allow(t, 11.0)  # one probe at a time
    breakers.success(t)
    assert breakers.state(t, 11.0) == CLOSED and breakers.open_targets() == []


def test_a_failed_probe_reopens_and_a_connection_error_opens_at_once():
    breakers, t = Breakers(failures=5, cooldown=10), Target("deadai", "m")
    breakers.failure(t, 0.0, connection=True)
    assert breakers.state(t, 1.0) == OPEN
    assert breakers.allow(t, 10.0)
    breakers.failure(t, 10.0)
    assert breakers.state(t, 15.0) == OPEN and breakers.state(t, 20.0) == HALF_OPEN


def test_a_success_resets_the_failure_count():
    breakers, t = Breakers(failures=2, cooldown=10), Target("openai", "x")
    breakers.failure(t, 0.0)
    breakers.success(t)
    breakers.failure(t, 1.0)
    assert breakers.state(t, 1.0) == CLOSED


# --- what counts as output -------------------------------------------------------------------

@pytest.mark.parametrize(("api", "name", "obj", "output"), [
    (apis.OPENAI_CHAT, None, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, False),
    (apis.OPENAI_CHAT, None, {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}, True),
    (apis.OPENAI_CHAT, None, {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}, True),
    (apis.OPENAI_CHAT, None, {"choices": [], "usage": {"prompt_tokens": 1}}, True),
    (apis.OPENAI_CHAT, None, {"error": {"message": "x"}}, False),
    (apis.ANTHROPIC_MESSAGES, "message_start", {"type": "message_start", "message": {}}, False),
    (apis.ANTHROPIC_MESSAGES, "ping", {"type": "ping"}, False),
    (apis.ANTHROPIC_MESSAGES, "content_block_start", {"type": "content_block_start"}, True),
    (apis.OPENAI_RESPONSES, "response.created", {"type": "response.created"}, False),
    (apis.OPENAI_RESPONSES, "response.output_text.delta", {"type": "response.output_text.delta"}, True),
    (apis.GEMINI_GENERATE, None, {"candidates": []}, True),
    (apis.GEMINI_GENERATE, None, {"error": {"code": 500}}, False),
    (apis.OLLAMA_CHAT, None, {"message": {"content": "hi"}, "done": False}, True),
    (apis.OLLAMA_CHAT, None, {"message": {"content": ""}, "done": False}, False),
])
def test_carries_output(api, name, obj, output):
    assert carries_output(api, name, obj) is output
