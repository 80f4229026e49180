"""Which calls get rows (llm_record), non-model passage in both modes, unservable calls, demo, CLI."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from llm_proxy import apis
from llm_proxy.calls import close_call, open_call
from llm_proxy.cli import main
from llm_proxy.cli.demo import demo_providers
from llm_proxy.config.models import Target
from llm_proxy.config.providers import load_providers
from llm_proxy.paths import DEFAULT_PROVIDERS
from llm_proxy.rescue.plan import Plan, serves_shape
from llm_proxy.rescue.servable import unservable
from llm_proxy.routing import route_request
from llm_proxy.scope.addon import Scope
from llm_proxy.scope.filter import is_model_call, may_carry_real_key, model_listing, recorded
from llm_proxy.scope.passage import pass_on
from tests.unit.test_access import ALICE, REAL, RING, keyed_access
from tests.unit.test_calls import json_response, make_flow

PROVIDERS = load_providers(DEFAULT_PROVIDERS, env={})

CLAUDE_CODE_NOISE = ["/anthropic", "/api/event_logging/v2/batch", "/api/claude_code/settings",
                     "/api/claude_code/policy_limits", "/api/claude_cli/bootstrap", "/mcp-registry/v0/servers",
                     "/v1/models", "/v1/files", "/v1/messages/batches", "/v1/responses/resp_1", "/api/tags"]
MODEL_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
               "/v1/messages/count_tokens", "/v1beta/models/gemini-2.5-flash:generateContent",
               "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "/api/chat", "/api/generate", "/api/embed",
               "/api/embeddings"]


@pytest.mark.parametrize("path", CLAUDE_CODE_NOISE)
def test_noise_is_no_model_call(path: str) -> None:
    api = apis.api_for_path(path)
    assert not is_model_call(api) and not recorded(api, False) and recorded(api, True)


@pytest.mark.parametrize("path", MODEL_PATHS)
def test_known_shapes_are_model_calls(path: str) -> None:
    assert is_model_call(apis.api_for_path(path)) and recorded(apis.api_for_path(path), False)


@pytest.mark.parametrize(("method", "path", "listing"), [
    ("GET", "/v1/models", True), ("GET", "/v1/models/gpt-4o", True), ("GET", "/v1beta/models", True),
    ("GET", "/api/v1/models/", True), ("POST", "/v1/models", False), ("DELETE", "/v1/models/ft:x", False),
    ("GET", "/v1/files", False), ("GET", "/v1/models/a/b", False), ("GET", "/v1beta/models/g:countTokens", False),
])
def test_model_listing(method: str, path: str, listing: bool) -> None:
    assert model_listing(method, path) is listing
    assert may_carry_real_key(apis.api_for_path(path), method, path) is listing


def _route(path: str):
    return route_request(PROVIDERS, reverse=True, scheme="http", host="localhost", port=8080, path=path)


def test_passthrough_passage_changes_nothing_but_the_destination() -> None:
    flow = make_flow("/anthropic/api/event_logging/v2/batch", b"\x00{big}", headers={"x-api-key": "sk-ant-own"})
    before = list(flow.request.headers.fields)
    assert pass_on(keyed_access(RING.__class__()), flow.request, _route(flow.request.path)) is None
    assert flow.request.url == "https://api.anthropic.com/api/event_logging/v2/batch"
    assert flow.request.content == b"\x00{big}"
    assert [h for h in flow.request.headers.fields if h[0] != b"host"] == [h for h in before if h[0] != b"host"]


def test_keys_mode_passage_needs_a_virtual_key() -> None:
    flow = make_flow("/anthropic/api/claude_code/settings", method="GET")
    refusal = pass_on(keyed_access(), flow.request, _route(flow.request.path))
    assert refusal is not None and (refusal.status, refusal.code) == (401, "missing_api_key")
    flow = make_flow("/anthropic/api/claude_code/settings", method="GET", headers={"x-api-key": "llmp-nope"})
    assert pass_on(keyed_access(), flow.request, _route(flow.request.path)).code == "invalid_api_key"


def test_keys_mode_passage_never_sends_the_real_key_but_for_a_listing() -> None:
    flow = make_flow("/openai/v1/files", b"data", headers={"authorization": f"Bearer {ALICE}"})
    assert pass_on(keyed_access(), flow.request, _route(flow.request.path)) is None
    assert "authorization" not in flow.request.headers and flow.request.content == b"data"
    flow = make_flow("/openai/v1/models", method="GET", headers={"authorization": f"Bearer {ALICE}"})
    assert pass_on(keyed_access(), flow.request, _route(flow.request.path)) is None
    assert flow.request.headers["authorization"] == f"Bearer {REAL['openai']}"


def test_keys_mode_admit_with_record_all_strips_the_key_of_a_non_model_path() -> None:
    flow = make_flow("/openai/v1/batches", {"input_file_id": "f"}, headers={"authorization": f"Bearer {ALICE}"})
    route = _route(flow.request.path)
    call = open_call(flow, route)
    assert asyncio.run(keyed_access().admit(flow, call)) is None
    assert "authorization" not in flow.request.headers


def test_record_all_never_keeps_bodies_of_non_model_calls() -> None:
    flow = make_flow("/anthropic/api/event_logging/v2/batch", {"events": [1]})
    call = open_call(flow, _route(flow.request.path))
    flow.response = json_response(200, {"ok": True})
    record, _ = close_call(flow, call, log_bodies=True)
    assert (record.api, record.request_body, record.response_body, record.status) == ("other", None, None, 200)


def test_scope_option() -> None:
    class Metering:
        record_all = False

    metering = Metering()
    scope = Scope(metering)
    with taddons.context(scope) as tctx:
        tctx.configure(scope, llm_record="all")
        assert metering.record_all is True
        tctx.configure(scope, llm_record="models")
        assert metering.record_all is False
        with pytest.raises(exceptions.OptionsError, match="llm_record must be one of models, all, not 'every'"):
            tctx.configure(scope, llm_record="every")


# --- unservable calls -------------------------------------------------------------------------------------------

OPENAI, ANTHROPIC, GEMINI, MISTRAL = (PROVIDERS.get(n) for n in ("openai", "anthropic", "gemini", "mistral"))


def test_serves_shape() -> None:
    assert serves_shape(ANTHROPIC, apis.OPENAI_CHAT) and not serves_shape(ANTHROPIC, apis.OPENAI_RESPONSES)
    assert serves_shape(GEMINI, apis.OPENAI_RESPONSES)  # its OpenAI-compatible base
    assert serves_shape(OPENAI, apis.ANTHROPIC_MESSAGES) and not serves_shape(OPENAI, apis.GEMINI_GENERATE)


def test_responses_call_routed_to_anthropic_is_a_400() -> None:
    blocked = unservable(Plan((Target("anthropic"),), 0), apis.OPENAI_RESPONSES, OPENAI, PROVIDERS, REAL,
                         "claude-haiku-4-5")
    assert blocked is not None and (blocked.status, blocked.code) == (400, "unsupported_api")
    assert blocked.message == ("llm-proxy cannot serve model 'claude-haiku-4-5': provider 'anthropic' (anthropic) "
                               "cannot serve a openai-responses call")


def test_passthrough_with_no_key_for_the_routed_provider_is_a_401() -> None:
    blocked = unservable(Plan((Target("anthropic"),), 0), apis.OPENAI_CHAT, OPENAI, PROVIDERS, {}, "claude-x")
    assert blocked is not None and (blocked.status, blocked.code) == (401, "provider_key_missing")
    assert "set ANTHROPIC_API_KEY where the proxy runs" in blocked.message
    assert "PROXY/anthropic/..." in blocked.message


def test_a_servable_target_anywhere_in_the_chain_lets_the_call_through() -> None:
    plan = Plan((Target("anthropic"), Target("mistral", "mistral-small")), 0)
    assert unservable(plan, apis.OPENAI_RESPONSES, OPENAI, PROVIDERS, {**REAL, "mistral": "k"}, "claude-x") is None
    assert unservable(plan, apis.OPENAI_RESPONSES, OPENAI, PROVIDERS, REAL, "claude-x").status == 400
    # the primary provider itself always may: the call goes where the client sent it
    assert unservable(Plan((Target("openai"),), 2), apis.OPENAI_CHAT, OPENAI, PROVIDERS, {}, "gpt") is None
    assert unservable(Plan((Target("anthropic"),), 0), apis.OPENAI_CHAT, OPENAI, PROVIDERS,
                      {"anthropic": "k"}, "claude-x") is None


def test_unknown_target_provider_is_a_400() -> None:
    blocked = unservable(Plan((Target("nope"),), 0), apis.OPENAI_CHAT, OPENAI, PROVIDERS, REAL, "m")
    assert blocked is not None and blocked.status == 400 and "'nope' is not in providers.toml" in blocked.message


# --- demo and CLI -----------------------------------------------------------------------------------------------


def test_demo_providers_keep_names_and_point_every_provider_at_the_fake(tmp_path: Path) -> None:
    shipped = tomllib.loads(DEFAULT_PROVIDERS.read_text())
    demo = demo_providers(shipped, "http://127.0.0.1:9999")
    assert set(demo["providers"]) == set(shipped["providers"])
    path = tmp_path / "p.toml"
    import tomli_w
    path.write_text(tomli_w.dumps(demo))
    loaded = load_providers(path, env={"OLLAMA_HOST": "elsewhere:1", "ANTHROPIC_API_KEY": "k"})
    for provider in loaded.by_name.values():
        assert provider.base_url == "http://127.0.0.1:9999" and provider.api_key_env is None
    assert loaded.for_host("127.0.0.1", 9999).name == "openai"  # the reverse target is openai's
    assert loaded.for_host("api.anthropic.com", 443).name == "anthropic"
    assert loaded.get("gemini").openai_base == "/v1beta/openai"


def test_keys_file_after_the_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kf = tmp_path / "k.toml"
    assert main(["keys", "create", "alice", "--keys-file", str(kf), "--rpm", "5"]) == 0
    assert main(["keys", "--keys-file", str(kf), "create", "bob"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--json", "--keys-file", str(kf)]) == 0
    assert '"alice"' in capsys.readouterr().out and kf.is_file()
    before = kf.read_text()
    # the value after the action wins over one before it
    assert main(["keys", "--keys-file", str(tmp_path / "other.toml"), "delete", "bob", "--keys-file", str(kf)]) == 0
    assert kf.read_text() != before and not (tmp_path / "other.toml").exists()


# --- the relay's backstop: no target could ever serve ----------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def _relay_answer(failure) -> bytes:
    from llm_proxy.rescue.breaker import Breakers
    from llm_proxy.rescue.relay import Relay, RelayJob
    relay = Relay(lambda: PROVIDERS, lambda: {}, Breakers())
    job = RelayJob(Plan((Target("anthropic"),), 0), apis.OPENAI_CHAT, "claude-x", OPENAI, "https://x/v1")
    writer = _Writer()
    asyncio.run(relay._answer_failure(job, failure, writer))  # type: ignore[arg-type]
    return writer.data


def test_relay_answers_an_unservable_last_failure_400_or_401_and_real_failures_502() -> None:
    from llm_proxy.rescue.attempts import Failure
    missing = _relay_answer(Failure(False, "no key for provider 'anthropic': set ANTHROPIC_API_KEY where the proxy "
                                           "runs", unservable=401))
    assert missing.startswith(b"HTTP/1.1 401 ") and b"llm-proxy cannot serve this call: no key" in missing
    assert _relay_answer(Failure(False, "provider 'x' cannot serve", unservable=400)).startswith(b"HTTP/1.1 400 ")
    assert _relay_answer(Failure(True, "connection refused", connection=True)).startswith(b"HTTP/1.1 502 ")
    assert _relay_answer(Failure(True, "timeout: no output in 60s")).startswith(b"HTTP/1.1 504 ")


def test_keys_mode_passage_drops_a_virtual_key_in_the_query_of_a_prefixed_path() -> None:
    flow = make_flow(f"/gemini/v1beta/files?key={ALICE}&pageSize=5", method="GET")
    assert pass_on(keyed_access(), flow.request, _route(flow.request.path)) is None
    assert ALICE not in flow.request.url and "x-goog-api-key" not in flow.request.headers
    assert flow.request.url == "https://generativelanguage.googleapis.com/v1beta/files?pageSize=5"
