"""Non-model calls, any path: no row, and the request goes upstream as the client sent it.

Paths of no known API shape (llm_proxy/apis.py) are drawn from random bytes and
from an agent's real noise (Claude Code's telemetry, settings, bootstrap, MCP
registry, `HEAD /anthropic`); each is driven through the real addon's hooks.
Passthrough: method, body and every header reach the upstream unchanged, and
the path is only moved to its provider. Keys mode: without a valid virtual key
it is refused locally; with one, the virtual key is removed and no real key is
put in its place. Neither ever gets a row.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from collections.abc import Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from llm_proxy import apis

from .harness import Case, InProcess
from .strategies import SECRET, Answer, Delivery, header_value, random_path_bytes

NOISE = [b"/anthropic", b"/anthropic/", b"/api/event_logging/v2/batch", b"/api/claude_code/settings",
         b"/api/claude_code/policy_limits", b"/api/claude_cli/bootstrap", b"/mcp-registry/v0/servers?limit=100",
         b"/anthropic/api/event_logging/v2/batch", b"/openai/v1/files", b"/v1/batches", b"/v1/models",
         b"/gemini/v1beta/models/gemini-2.5-flash:countTokens", b"/ollama/api/tags", b"/v1/responses/resp_1",
         b"/gemini/v1beta/files?key=" + SECRET.encode() + b"&pageSize=5", b"/v1/models?key=" + SECRET.encode()]
_PATH = st.one_of(st.sampled_from(NOISE), random_path_bytes.map(lambda b: b"/" + b),
                  st.tuples(st.sampled_from(NOISE), random_path_bytes).map(lambda t: t[0] + b"/" + t[1]))
_METHOD = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE"])
_EXTRA_HEADERS = st.lists(st.tuples(st.sampled_from([b"x-app", b"anthropic-beta", b"content-type", b"user-agent"]),
                                    header_value), max_size=3)


def _shape(path: bytes) -> str:
    return apis.api_for_path(path.decode("utf-8", "surrogateescape").partition("?")[0])


@st.composite
def non_model_case(draw: st.DrawFn) -> Case:
    path = draw(_PATH)
    assume(_shape(path) == apis.OTHER and not path.startswith(b"/_llm/"))
    headers = [(b"host", b"api.openai.com"), *draw(_EXTRA_HEADERS)]
    if draw(st.booleans()):
        headers.append((b"x-api-key", SECRET.encode()))
    return Case(path=path, headers=headers, body=draw(st.binary(max_size=200)), answer=Answer(200, "", []),
                delivery=Delivery(None, False, []), method=draw(_METHOD))


@pytest.fixture(scope="module")
def passthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp("scope-pass"), keys=False, database="sqlite") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp("scope-keys"), keys=True, database="sqlite") as proxy:
        yield proxy


@given(case=non_model_case())
def test_non_model_path_passes_unchanged_and_leaves_no_row(passthrough: InProcess, case: Case) -> None:
    outcome = passthrough.run(case)
    assert outcome.rows == 0 and not outcome.model_call
    assert not outcome.local, "passthrough: a non-model call is never answered by the proxy"
    assert outcome.sent is not None
    method, body, headers, _ = outcome.sent
    assert method == case.method
    assert body == case.body
    # Host is the one header that changes: a path prefix moves the call to its provider's host.
    assert [h for h in headers if h[0] != b"host"] == [h for h in case.headers if h[0] != b"host"], (
        "the headers of a non-model call must reach the upstream unchanged")
    passthrough.check(case, outcome)


@given(case=non_model_case())
def test_non_model_path_in_keys_mode_needs_a_key_and_never_gets_the_real_one(keyed: InProcess, case: Case) -> None:
    outcome = keyed.run(case)
    assert outcome.rows == 0
    # A virtual key is presented by its header, or by a `key` query parameter whose whole value it
    # is, as a URL query reads (`?key=<secret>/` presents `<secret>/`, which is no key: refused).
    query = case.path.partition(b"?")[2].decode("utf-8", "surrogateescape")
    in_query = ("key", SECRET) in parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    presented = any(name == b"x-api-key" for name, _ in case.headers) or in_query
    assert outcome.local is not presented, "keys mode: refused locally exactly when no virtual key is presented"
    if outcome.sent is not None:
        method, body, headers, url = outcome.sent
        assert (method, body) == (case.method, case.body)
        assert SECRET not in url, f"the virtual key went upstream in the URL: {url}"
        credentials = [v for n, v in headers if n.lower() in (b"authorization", b"x-api-key", b"api-key",
                                                                b"x-goog-api-key")]
        # The documented exception: GET .../models and GET .../models/<id> (one segment, no ':').
        listing = case.method == b"GET" and re.search(rb"/models(/[^/:?]+)?/?$", case.path.partition(b"?")[0]) is not None
        assert credentials == [] or listing, f"a credential went upstream on a non-model path: {credentials}"
    keyed.check(case, outcome)
