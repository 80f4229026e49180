"""The request hook fails closed: a call it could not check is answered, never sent on unchecked."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from mitmproxy.addons import proxyserver
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

import llm_proxy.addon as addon_module
from llm_proxy.addon import LLMProxy
from llm_proxy.paths import DEFAULT_PRICING, DEFAULT_PROVIDERS


def chat_flow():
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = tutils.treq(method=b"POST", scheme=b"http", host="localhost", port=8080, authority=b"",
                          path=b"/openai/v1/chat/completions", content=body,
                          headers=Headers([(b"host", b"localhost:8080"), (b"content-type", b"application/json"),
                                           (b"authorization", b"Bearer sk-client-own-key")]))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://localhost:8080")
    return flow


def run_request_hook(tmp_path, monkeypatch, flow) -> LLMProxy:
    monkeypatch.setenv("LLM_PROXY_HOME", str(tmp_path))
    addon = LLMProxy()
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        # All of the addon's options, as mitmproxy's first configure passes them.
        tctx.configure(addon, llm_db=f"sqlite:///{tmp_path / 'rows.db'}", llm_providers=str(DEFAULT_PROVIDERS),
                       llm_pricing=str(DEFAULT_PRICING), llm_keys="", llm_max_concurrent=0, llm_retries=0)
        try:
            asyncio.run(addon.request(flow))
        finally:
            addon.done()
    return addon


@pytest.mark.parametrize("broken", ["open_call", "admit"])
def test_an_error_in_the_request_hook_is_answered_in_the_provider_shape(tmp_path, monkeypatch, broken):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    if broken == "open_call":
        monkeypatch.setattr(addon_module, "open_call", boom)
    else:
        monkeypatch.setattr(addon_module.Access, "admit", boom)
    flow = chat_flow()
    addon = run_request_hook(tmp_path, monkeypatch, flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert json.loads(flow.response.content)["error"]["message"] == (
        "llm-proxy could not handle this call; its log says why")
    assert flow.request.host == ("localhost" if broken == "open_call" else "api.openai.com")  # never forwarded
    # Refused calls get their row too, even when the request could not be read at all.
    rows = sqlite3.connect(tmp_path / "rows.db").execute(
        "select status, error, cost_usd, request_id from llm_requests").fetchall()
    assert [(status, cost) for status, _, cost, _ in rows] == [(500, "0")]  # SQLite keeps money as text
    assert rows[0][1].startswith("llm-proxy answered HTTP 500") and rows[0][3] == flow.id


def test_without_an_error_the_call_goes_on(tmp_path, monkeypatch):
    flow = chat_flow()
    run_request_hook(tmp_path, monkeypatch, flow)
    assert flow.response is None and flow.request.host == "api.openai.com"
