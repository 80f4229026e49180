"""The hot path's shortcuts must answer exactly as the slow way: headers on raw
fields, the bounded memo, and the Router's remembered routes and plans."""

from __future__ import annotations

import gzip

import pytest
from mitmproxy.http import Headers
from mitmproxy.test import tutils

from llm_proxy import apis, headers
from llm_proxy.config.memo import Memo
from llm_proxy.config.models import Target, parse_models
from llm_proxy.config.providers import Providers, load_providers
from llm_proxy.paths import DEFAULT_PROVIDERS
from llm_proxy.rescue.plan import Plan
from llm_proxy.routing import Router, plan_call, route_request

PROVIDERS = load_providers(DEFAULT_PROVIDERS, env={})


# --- headers -----------------------------------------------------------------------------

def test_body_is_the_raw_content_unless_content_encoded():
    plain = tutils.treq(content=b'{"model": "m"}')
    assert headers.body(plain) == b'{"model": "m"}'
    zipped = tutils.treq(content=b"")
    zipped.headers["Content-Encoding"] = "gzip"
    zipped.raw_content = gzip.compress(b'{"model": "z"}')
    assert headers.body(zipped) == b'{"model": "z"}' == zipped.get_content()
    broken = tutils.treq(content=b"")
    broken.headers["content-encoding"] = "gzip"
    broken.raw_content = b"not gzip"
    assert headers.body(broken) == b"not gzip"  # as get_content(strict=False)
    assert headers.body(tutils.treq(content=b"")) == b""


def test_rewrite_drops_every_field_of_a_name_in_any_case_and_appends():
    h = Headers([(b"Accept-Encoding", b"gzip"), (b"host", b"x"), (b"accept-encoding", b"br")])
    headers.rewrite(h, frozenset({b"accept-encoding"}), ((b"accept-encoding", b"identity"),))
    assert h.fields == ((b"host", b"x"), (b"accept-encoding", b"identity"))
    assert h["Accept-Encoding"] == "identity"


def test_has_field_is_case_insensitive():
    request = tutils.treq()
    request.headers["X-Thing"] = "1"
    assert headers.has_field(request, b"x-thing") and not headers.has_field(request, b"x-other")


# --- memo --------------------------------------------------------------------------------

def test_memo_computes_once_per_key_and_stops_growing_at_its_limit():
    calls: list[str] = []

    def compute(key: str, context: int = 0) -> str:
        calls.append(key)
        return key.upper() + str(context)

    memo: Memo[str, str] = Memo(compute, limit=2)
    assert [memo("a", 1), memo("a", 2), memo("b"), memo("c"), memo("c")] == ["A1", "A1", "B0", "C0", "C0"]
    assert calls == ["a", "b", "c", "c"]  # "c" came past the limit: answered, not remembered
    assert len(memo) == 2


def test_memo_remembers_none():
    calls = []
    memo: Memo[str, None] = Memo(lambda key: calls.append(key))
    assert memo("x") is None and memo("x") is None
    assert calls == ["x"]


# --- router ------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse,host,port,path", [
    (True, "localhost", 8080, "/anthropic/v1/messages?beta=true"),
    (True, "localhost", 8080, "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=K"),
    (True, "api.openai.com", 443, "/v1/chat/completions"),
    (True, "my-llm.internal", 8000, "/v1/chat/completions"),
    (False, "api.anthropic.com", 443, "/v1/messages"),
    (False, "example.com", 443, "/v1/chat/completions"),
])
def test_router_routes_as_route_request_does_and_again_from_its_memo(reverse, host, port, path):
    router = Router(PROVIDERS, 0)
    expected = route_request(PROVIDERS, reverse=reverse, scheme="https", host=host, port=port, path=path)
    for _ in range(2):
        assert router.route(reverse=reverse, scheme="https", host=host, port=port, path=path) == expected


def test_router_keeps_each_query_string_apart():
    router = Router(PROVIDERS, 0)
    first = router.route(reverse=True, scheme="http", host="localhost", port=8080, path="/anthropic/v1/messages?a=1")
    second = router.route(reverse=True, scheme="http", host="localhost", port=8080, path="/anthropic/v1/messages?b=2")
    assert (first.upstream_url, second.upstream_url) == (
        "https://api.anthropic.com/v1/messages?a=1", "https://api.anthropic.com/v1/messages?b=2")


def test_router_plans_as_plan_call_does_with_its_retries():
    table = {"fast": {"target": "groq:llama-3.3-70b", "fallbacks": ["openai:gpt-4o-mini"]}}
    providers = Providers(PROVIDERS.by_name.values(), parse_models(table, PROVIDERS.by_name))
    router = Router(providers, 2)
    openai = router.route(reverse=True, scheme="https", host="api.openai.com", port=443, path="/v1/chat/completions")
    for _ in range(2):
        assert router.plan(openai, "fast", by_model=True) == Plan(
            (Target("groq", "llama-3.3-70b"), Target("openai", "gpt-4o-mini")), 2)
        assert router.plan(openai, "claude-haiku-4-5", by_model=True) == plan_call(
            providers, openai, "claude-haiku-4-5", by_model=True, default_retries=2)
    anthropic = router.route(reverse=True, scheme="http", host="localhost", port=8080, path="/anthropic/v1/messages")
    assert anthropic.api == apis.ANTHROPIC_MESSAGES
    assert router.plan(anthropic, "claude-haiku-4-5", by_model=False).targets == (Target("anthropic"),)
