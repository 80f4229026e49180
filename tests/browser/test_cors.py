"""CORS with a real browser: a page on another origin calls the proxy with fetch().

The proxy is started with `llm_cors_origins` naming one origin. A page served
from that origin calls a metered API path with a custom header (so Chromium
sends a preflight first) and the admin API with the admin bearer: both work,
and the preflight is answered by the proxy, never forwarded. The same page
served from another origin is blocked by the browser, and its call never
reaches the provider.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from llm_proxy.redact import fingerprint
from tests.e2e.conftest import Proxy
from tests.fakes.upstream import FakeUpstream

from .conftest import ADMIN_KEY, Admin, StaticSite, start_proxy

PAGE = "<!doctype html><title>a browser app</title><p>calls the proxy directly</p>"

# Runs in the page: a chat completion with a custom header, then the usage API with the admin key.
CALLS = """async ({proxy, key, trace, admin}) => {
  const out = {};
  try {
    const r = await fetch(proxy + "/v1/chat/completions", {
      method: "POST",
      headers: {"authorization": "Bearer " + key, "content-type": "application/json", "x-app-trace": trace,
                "x-fake-scenario": JSON.stringify({input: 21, output: 9})},
      body: JSON.stringify({model: "gpt-4o-mini", messages: [{role: "user", content: "hi from " + trace}]}),
    });
    out.chat = {status: r.status, body: await r.json()};
  } catch (e) { out.chat = {error: String(e)}; }
  try {
    const r = await fetch(proxy + "/_llm/api/usage?since=1d", {headers: {"authorization": "Bearer " + admin}});
    out.usage = {status: r.status, body: await r.json()};
  } catch (e) { out.usage = {error: String(e)}; }
  return out;
}"""


class Cors:
    def __init__(self, proxy: Proxy, allowed: StaticSite, other: StaticSite, upstream: FakeUpstream) -> None:
        self.proxy = proxy
        self.allowed = allowed
        self.other = other
        self.upstream = upstream
        self.admin = Admin(proxy)


@pytest.fixture(scope="module")
def cors(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str
         ) -> Iterator[Cors]:
    tmp: Path = tmp_path_factory.mktemp("cors")
    with StaticSite(PAGE) as allowed, StaticSite(PAGE) as other:
        proxy = start_proxy(tmp, upstream.url, pg_url, pg_table, "--set", f"llm_cors_origins={allowed.origin}")
        c = Cors(proxy, allowed, other, upstream)
        yield c
        c.admin.close()
        proxy.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def call_from(page: Page, site: StaticSite, cors: Cors, key: str, trace: str) -> dict[str, Any]:
    page.goto(site.origin + "/")
    assert page.evaluate("location.origin") == site.origin != cors.proxy.url
    return page.evaluate(CALLS, {"proxy": cors.proxy.url, "key": key, "trace": trace, "admin": ADMIN_KEY})


def upstream_saw(upstream: FakeUpstream, trace: str) -> list[str]:
    return [r.method for r in upstream.requests if r.headers.get("x-app-trace") == trace]


def test_an_allowed_origin_calls_the_proxy_from_the_browser(page: Page, cors: Cors) -> None:
    key = f"sk-browser-{secrets.token_hex(6)}"
    trace = f"allowed-{secrets.token_hex(4)}"
    out = call_from(page, cors.allowed, cors, key, trace)
    assert out["chat"].get("status") == 200, out
    assert out["chat"]["body"]["usage"]["prompt_tokens"] == 21
    # The preflight was answered by the proxy itself: only the POST reached the provider.
    assert upstream_saw(cors.upstream, trace) == ["POST"]

    assert out["usage"].get("status") == 200, out
    # (the chat's row may not be stored yet when this ran: only the answer's shape is certain)
    assert set(out["usage"]["body"]) >= {"since", "until", "totals", "groups"}
    # The call was metered like any other.
    deadline = time.monotonic() + 15
    while not (rows := cors.admin.get("/_llm/api/requests", key=fingerprint(key))["requests"]):
        assert time.monotonic() < deadline, "the browser's call was never recorded"
        time.sleep(0.1)
    assert [(r["model"], r["input_tokens"], r["output_tokens"]) for r in rows] == [("gpt-4o-mini", 21, 9)]


def test_another_origin_is_blocked_by_the_browser(page: Page, cors: Cors) -> None:
    key = f"sk-browser-{secrets.token_hex(6)}"
    trace = f"other-{secrets.token_hex(4)}"
    out = call_from(page, cors.other, cors, key, trace)
    assert "error" in out["chat"] and "Failed to fetch" in out["chat"]["error"], out
    assert "error" in out["usage"] and "Failed to fetch" in out["usage"]["error"], out
    # The failed preflight kept the call itself from ever being sent.
    assert "POST" not in upstream_saw(cors.upstream, trace)
    time.sleep(0.5)
    assert cors.admin.get("/_llm/api/requests", key=fingerprint(key))["requests"] == []


def test_preflight_answers(cors: Cors) -> None:
    """What the browser relied on above, as headers (allowed origin: 204 and the CORS headers; other: none)."""

    asked = {"access-control-request-method": "POST",
             "access-control-request-headers": "authorization,content-type,x-app-trace"}
    ok = httpx.options(f"{cors.proxy.url}/v1/chat/completions", headers={"origin": cors.allowed.origin, **asked})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == cors.allowed.origin
    assert "POST" in ok.headers["access-control-allow-methods"].upper()
    assert "x-app-trace" in ok.headers["access-control-allow-headers"].lower()
    bad = httpx.options(f"{cors.proxy.url}/_llm/api/usage", headers={"origin": cors.other.origin, **asked})
    assert "access-control-allow-origin" not in bad.headers
