"""check_key, real_keys and Access.admit/release on mitmproxy test flows."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tflow, tutils

from llm_proxy import access as access_module
from llm_proxy.access import Access, check_key, real_keys
from llm_proxy.calls import open_call
from llm_proxy.config.providers import load_providers
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.limits.gate import Gate
from llm_proxy.limits.limiter import Refusal
from llm_proxy.paths import DEFAULT_PROVIDERS
from llm_proxy.redact import KEY_HEADERS, fingerprint
from llm_proxy.routing import route_request

PROVIDERS = load_providers(DEFAULT_PROVIDERS, env={})
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

ALICE = "llmp-" + "a" * 43
OFF = "llmp-" + "o" * 43
OLD = "llmp-" + "x" * 43
GPT = "llmp-" + "g" * 43
UNKNOWN = "llmp-" + "u" * 43

REAL = {"openai": "sk-real-openai", "anthropic": "sk-ant-real", "gemini": "AIza-real-gemini"}


def vkey(name: str, secret: str, **kw) -> VirtualKey:
    return VirtualKey(name=name, hash=hash_secret(secret), **kw)


RING = KeyRing([
    vkey("alice", ALICE),
    vkey("off", OFF, disabled=True, expires=datetime(2020, 1, 1, tzinfo=UTC)),
    vkey("old", OLD, expires=datetime(2026, 1, 1, tzinfo=UTC)),
    vkey("gpt", GPT, models=("gpt-4o*",)),
])


# --- check_key -----------------------------------------------------------------------------------

def test_check_key_missing():
    expected = (None, Refusal(401, "no API key: present your llm-proxy key as your SDK's API key",
                              "missing_api_key"))
    assert check_key(RING, None, "gpt-4o", NOW) == expected
    assert check_key(RING, "", "gpt-4o", NOW) == expected


def test_check_key_unknown():
    assert check_key(RING, UNKNOWN, "gpt-4o", NOW) == (None, Refusal(401, "unknown API key", "invalid_api_key"))
    assert check_key(RING, RING.by_name["alice"].hash, None, NOW)[1].code == "invalid_api_key"
    assert check_key(KeyRing(), ALICE, None, NOW)[1].code == "invalid_api_key"


def test_check_key_disabled_comes_before_expired():
    assert check_key(RING, OFF, None, NOW) == (
        RING.by_name["off"], Refusal(403, "key 'off' is disabled", "key_disabled"))


def test_check_key_expired():
    assert check_key(RING, OLD, None, NOW) == (
        RING.by_name["old"], Refusal(403, "key 'old' expired on 2026-01-01 00:00 UTC", "key_expired"))
    assert check_key(RING, OLD, None, datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == (RING.by_name["old"], None)


def test_check_key_expired_message_is_in_utc():
    # BUG: access.py formats key.expires as given (here +02:00) but labels it UTC:
    # "expired on 2026-01-01 12:00 UTC" when the key expired at 10:00 UTC.
    ring = KeyRing([vkey("tz", OLD, expires=datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))))])
    key, refusal = check_key(ring, OLD, None, NOW)
    assert refusal == Refusal(403, "key 'tz' expired on 2026-01-01 10:00 UTC", "key_expired")


def test_check_key_model_not_allowed():
    assert check_key(RING, GPT, "claude-3-5-sonnet", NOW) == (
        RING.by_name["gpt"], Refusal(403, "key 'gpt' may not use model 'claude-3-5-sonnet'", "model_not_allowed"))


def test_check_key_ok():
    assert check_key(RING, ALICE, "anything", NOW) == (RING.by_name["alice"], None)
    assert check_key(RING, GPT, "gpt-4o-mini", NOW) == (RING.by_name["gpt"], None)
    assert check_key(RING, GPT, None, NOW) == (RING.by_name["gpt"], None)


# --- real_keys -----------------------------------------------------------------------------------

def test_real_keys_reads_only_set_variables():
    env = {"OPENAI_API_KEY": "sk-real", "ANTHROPIC_API_KEY": "", "OLLAMA_HOST": "box:11434",
           "GROQ_API_KEY": "gsk-real", "UNRELATED": "x"}
    assert real_keys(PROVIDERS, env) == {"openai": "sk-real", "groq": "gsk-real"}
    assert real_keys(PROVIDERS, {}) == {}


def test_use_providers_reads_the_environment(monkeypatch):
    for p in PROVIDERS.by_name.values():
        if p.api_key_env:
            monkeypatch.delenv(p.api_key_env, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    acc = Access()
    acc.use_providers(PROVIDERS)
    assert acc.provider_keys == {"anthropic": "sk-ant-env"}


# --- Access.admit ------------------------------------------------------------------------------------

def make_flow(path: str, body: dict | None, headers: dict[str, str] | None = None):
    content = json.dumps(body).encode() if body is not None else b""
    fields = [(b"host", b"localhost:8080"), (b"content-type", b"application/json"),
              (b"content-length", str(len(content)).encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    req = tutils.treq(method=b"POST", scheme=b"http", host="localhost", port=8080, authority=b"",
                      path=path.encode(), headers=Headers(fields), content=content)
    return tflow.tflow(req=req)


def opened(path: str, body: dict | None = None, headers: dict[str, str] | None = None):
    flow = make_flow(path, body, headers)
    route = route_request(PROVIDERS, reverse=True, scheme="http", host="localhost", port=8080, path=path)
    return flow, open_call(flow, route)


def keyed_access(ring: KeyRing = RING, provider_keys: dict[str, str] | None = None) -> Access:
    acc = Access()
    acc.use_keys(ring)
    acc.provider_keys = dict(REAL if provider_keys is None else provider_keys)
    return acc


def admit(acc: Access, flow, call):
    return asyncio.run(acc.admit(flow, call))


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"parts": [{"text": "hi"}]}]}


def key_headers(flow) -> dict[str, str]:
    return {name: flow.request.headers[name] for name in KEY_HEADERS if name in flow.request.headers}


def test_openai_virtual_key_is_swapped_for_the_real_key():
    acc = keyed_access()
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"authorization": "Bearer sk-real-openai"}
    assert ALICE not in str(flow.request.headers)
    assert (call.key_id, call.holds_key) == ("alice", True)
    assert acc.limiter.in_flight("alice") == 1
    assert flow.request.host == "api.openai.com"


def test_a_key_that_is_not_utf8_is_an_unknown_key_not_a_crash():
    acc = keyed_access()
    flow = make_flow("/openai/v1/chat/completions", CHAT)
    flow.request.headers.fields += ((b"authorization", b"Bearer llmp-\xff\xfe"),)
    route = route_request(PROVIDERS, reverse=True, scheme="http", host="localhost", port=8080,
                          path="/openai/v1/chat/completions")
    call = open_call(flow, route)
    refusal = admit(acc, flow, call)
    assert (refusal.status, refusal.code) == (401, "invalid_api_key")
    assert call.key_id is not None and call.key_id.startswith("fp-")


def test_openai_key_in_x_api_key_header_is_accepted_and_removed():
    acc = keyed_access()
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"X-API-Key": ALICE})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"authorization": "Bearer sk-real-openai"}


def test_azure_style_api_key_header_is_accepted_and_removed():
    acc = keyed_access()
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"api-key": ALICE})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"authorization": "Bearer sk-real-openai"}


def test_anthropic_gets_x_api_key():
    acc = keyed_access()
    flow, call = opened("/anthropic/v1/messages", MESSAGES,
                        {"x-api-key": ALICE, "anthropic-version": "2023-06-01"})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"x-api-key": "sk-ant-real"}
    assert flow.request.headers["anthropic-version"] == "2023-06-01"
    assert call.key_id == "alice"


def test_anthropic_bearer_virtual_key_becomes_x_api_key():
    acc = keyed_access()
    flow, call = opened("/anthropic/v1/messages", MESSAGES, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"x-api-key": "sk-ant-real"}


def test_gemini_query_key_is_removed_and_header_set():
    acc = keyed_access()
    path = f"/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={ALICE}"
    flow, call = opened(path, GEMINI)
    assert call.model == "gemini-2.0-flash"
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"x-goog-api-key": "AIza-real-gemini"}
    assert "key" not in flow.request.query
    assert flow.request.query["alt"] == "sse"
    assert ALICE not in flow.request.url
    assert flow.request.url == ("https://generativelanguage.googleapis.com/v1beta/models/"
                                "gemini-2.0-flash:streamGenerateContent?alt=sse")


def test_gemini_header_key():
    acc = keyed_access()
    flow, call = opened("/gemini/v1beta/models/gemini-2.0-flash:generateContent", GEMINI,
                        {"x-goog-api-key": ALICE})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"x-goog-api-key": "AIza-real-gemini"}


def test_provider_without_api_key_env_gets_no_key():
    acc = keyed_access()
    flow, call = opened("/ollama/api/chat", {"model": "llama3", "messages": []},
                        {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {}
    assert call.key_id == "alice"


def test_provider_key_missing_is_a_401_and_releases():
    acc = keyed_access(provider_keys={"anthropic": "sk-ant-real"})
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) == Refusal(
        401, "llm-proxy has no key for provider 'openai': set OPENAI_API_KEY where the proxy runs",
        "provider_key_missing")
    assert acc.limiter.in_flight("alice") == 0
    assert call.holds_key is False
    assert "sk-ant-real" not in str(flow.request.headers)


def test_passthrough_leaves_credentials_alone():
    acc = Access()
    acc.provider_keys = dict(REAL)
    client = "sk-proj-CLIENTKEY"
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {client}"})
    assert admit(acc, flow, call) is None
    assert key_headers(flow) == {"authorization": f"Bearer {client}"}
    assert call.key_id == fingerprint(client)
    assert call.holds_key is False


def test_passthrough_gemini_query_key_moves_to_its_header():
    """Google reads x-goog-api-key as it reads ?key=; in the header the secret is in no URL
    that mitmproxy prints, shows in mitmweb or saves with the flow."""
    acc = Access()
    flow, call = opened("/gemini/v1beta/models/gemini-2.0-flash:generateContent?alt=sse&key=AIza-client", GEMINI)
    assert admit(acc, flow, call) is None
    assert "key" not in flow.request.query and flow.request.query["alt"] == "sse"
    assert flow.request.headers["x-goog-api-key"] == "AIza-client"
    assert call.key_id == fingerprint("AIza-client") and call.path.endswith("&key=***")


def test_refusals_reach_nothing_upstream():
    acc = keyed_access()
    cases = [
        ({}, 401, "missing_api_key", None),
        ({"authorization": f"Bearer {UNKNOWN}"}, 401, "invalid_api_key", fingerprint(UNKNOWN)),
        ({"authorization": f"Bearer {OFF}"}, 403, "key_disabled", "off"),
        ({"authorization": f"Bearer {OLD}"}, 403, "key_expired", "old"),
    ]
    for headers, status, code, key_id in cases:
        flow, call = opened("/openai/v1/chat/completions", CHAT, headers)
        refusal = admit(acc, flow, call)
        assert (refusal.status, refusal.code, call.key_id, call.holds_key) == (status, code, key_id, False)
        assert "sk-real-openai" not in str(flow.request.headers)


def test_model_not_allowed():
    acc = keyed_access()
    flow, call = opened("/anthropic/v1/messages", MESSAGES, {"x-api-key": GPT})
    assert admit(acc, flow, call) == Refusal(
        403, "key 'gpt' may not use model 'claude-3-5-haiku-latest'", "model_not_allowed")
    assert call.key_id == "gpt"
    assert key_headers(flow) == {"x-api-key": GPT}  # untouched: answered locally


def test_parallel_limit_and_idempotent_release():
    ring = KeyRing([vkey("alice", ALICE, parallel=1)])
    acc = keyed_access(ring)
    flow1, call1 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    flow2, call2 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow1, call1) is None
    refusal = admit(acc, flow2, call2)
    assert (refusal.status, refusal.code) == (429, "parallel_limit_exceeded")
    acc.release(call1)
    acc.release(call1)
    assert acc.limiter.in_flight("alice") == 0
    assert call1.holds_key is False
    flow3, call3 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow3, call3) is None
    acc.release(call1)  # a third release of the old call must not free call3's slot
    assert acc.limiter.in_flight("alice") == 1


def test_finished_counts_tokens_against_tpm():
    ring = KeyRing([vkey("alice", ALICE, tpm=100)])
    acc = keyed_access(ring)
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None
    acc.finished(call, 100)
    assert acc.limiter.in_flight("alice") == 0
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    refusal = admit(acc, flow, call)
    assert (refusal.status, refusal.code, refusal.headers["x-ratelimit-limit-tokens"]) == (
        429, "rate_limit_exceeded", "100")


def test_budget_over_is_429_insufficient_quota():
    ring = KeyRing([vkey("alice", ALICE, budget=Decimal("1.00"))])
    acc = keyed_access(ring)
    acc.spend.refresh(lambda windows: {"alice": Decimal("1.00")})
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    refusal = admit(acc, flow, call)
    assert (refusal.status, refusal.code, refusal.message) == (
        429, "insufficient_quota", "key 'alice' has spent $1.00 of its $1.00 monthly budget")
    assert acc.limiter.in_flight("alice") == 0
    acc.spend.refresh(lambda windows: {"alice": Decimal("0.99")})
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None


def test_budget_unknown_spend_is_503(monkeypatch):
    monkeypatch.setattr(access_module, "BUDGET_LOAD_WAIT", 0.01)
    ring = KeyRing([vkey("alice", ALICE, budget=Decimal("1"))])
    acc = keyed_access(ring)
    flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) == Refusal(
        503, "budget state unavailable (database unreachable); try again later", "budget_unavailable",
        {"retry-after": "5"})
    assert acc.limiter.in_flight("alice") == 0


def test_gate_full_and_timeout_release_the_key():
    async def scenario():
        acc = keyed_access()
        acc.gate = Gate(limit=1, max_waiting=0, timeout=0.05)
        flow1, call1 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
        assert await acc.admit(flow1, call1) is None
        assert call1.gate is acc.gate
        assert acc.gate.active == 1
        flow2, call2 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
        assert await acc.admit(flow2, call2) == Refusal(
            503, "llm-proxy queue is full; try again shortly", "queue_full", {"retry-after": "1"})
        assert acc.limiter.in_flight("alice") == 1  # only call1
        acc.gate.max_waiting = 5
        flow3, call3 = opened("/openai/v1/chat/completions", CHAT, {"authorization": f"Bearer {ALICE}"})
        assert await acc.admit(flow3, call3) == Refusal(
            429, "llm-proxy waited 0.05s for a free slot", "queue_timeout", {"retry-after": "1"})
        assert (acc.limiter.in_flight("alice"), acc.gate.active, acc.gate.waiting) == (1, 1, 0)
        acc.release(call1)
        assert (acc.limiter.in_flight("alice"), acc.gate.active, call1.gate) == (0, 0, None)

    asyncio.run(scenario())


def test_release_is_idempotent_for_the_gate():
    async def scenario():
        acc = Access()
        acc.gate = Gate(limit=2, max_waiting=0, timeout=0.05)
        calls = []
        for _ in range(2):
            flow, call = opened("/openai/v1/chat/completions", CHAT, {"authorization": "Bearer sk-client"})
            assert await acc.admit(flow, call) is None
            calls.append(call)
        assert acc.gate.active == 2
        acc.release(calls[0])
        acc.release(calls[0])
        acc.release(calls[0])
        assert acc.gate.active == 1

    asyncio.run(scenario())


def test_gate_handover_to_a_waiting_call():
    async def scenario():
        acc = Access()
        acc.gate = Gate(limit=1, max_waiting=5, timeout=1.0)
        flow1, call1 = opened("/openai/v1/chat/completions", CHAT)
        assert await acc.admit(flow1, call1) is None
        flow2, call2 = opened("/openai/v1/chat/completions", CHAT)
        waiting = asyncio.create_task(acc.admit(flow2, call2))
        await asyncio.sleep(0)
        assert acc.gate.waiting == 1
        acc.release(call1)
        assert await waiting is None
        assert (call2.gate, acc.gate.active) == (acc.gate, 1)
        acc.release(call2)
        assert acc.gate.active == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("query", ["?a=1;key=VIRT&b=2", "?a=1%3Bkey=VIRT", "?%6Bey=VIRT&alt=sse"])
def test_keys_mode_sends_no_key_parameter_upstream_however_it_is_separated(query):
    """Found by the fuzz layer (F15): mitmproxy writes `;` back as %3B when it rewrites a
    query, so a `;key=` parameter used to reach the provider, virtual secret and all."""
    acc = keyed_access()
    flow, call = opened(f"/openai/v1/chat/completions{query}", CHAT, {"authorization": f"Bearer {ALICE}"})
    assert admit(acc, flow, call) is None
    assert "VIRT" not in flow.request.url
