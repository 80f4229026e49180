"""Issue 8, hooks side, as plain functions: host spelling, the failure log, keys mode that
never lapses into passthrough, option values mitmproxy cannot parse, and no secret in the log."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import optmanager
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow

import llm_proxy.addon as addon_module
from llm_proxy.access import Access
from llm_proxy.addon import LLMProxy
from llm_proxy.config.hostnames import LOOPBACK, canonical_host, canonical_host_port
from llm_proxy.config.providers import Provider
from llm_proxy.failures import FailureLog
from llm_proxy.keys.model import KeyRing
from llm_proxy.option_values import reject_unknown, reject_unparsable
from llm_proxy.paths import DEFAULT_PRICING, DEFAULT_PROVIDERS


@pytest.mark.parametrize("spelling", ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1",
                                      "127.9.9.9", "localhost", "LOCALHOST.", "api.localhost", "::1", "[::1]",
                                      "::ffff:127.0.0.1", "[0:0:0:0:0:0:0:1]"])
def test_every_spelling_of_loopback_is_one_host(spelling: str) -> None:
    assert canonical_host(spelling) == LOOPBACK


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("10.1", "10.0.0.1"), ("167772161", "10.0.0.1"), ("API.OpenAI.com.", "api.openai.com"),
    ("::ffff:10.0.0.1", "10.0.0.1"), ("1e400", "1e400"), ("", ""), ("x" * 300, "x" * 300),
])
def test_addresses_take_their_standard_form_and_names_their_lower_case(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling) == canonical


def test_a_provider_at_an_address_serves_every_spelling_of_it() -> None:
    provider = Provider("local", "http://127.0.0.1:11434", "ollama", ("127.0.0.1:11434", "[::1]:8080", "gw.corp"))
    assert canonical_host_port("[::1]:8080") == (LOOPBACK, 8080)
    assert all(provider.serves(h, 11434) for h in ("127.1", "2130706433", "localhost", "::1"))
    assert provider.serves("GW.corp.", 443) and not provider.serves("gw.corp.evil", 443)
    assert not provider.serves("127.0.0.1", 11435) and not provider.serves("10.0.0.1", 11434)


def test_the_failure_log_logs_each_kind_once_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("test.failures"), summary_every=3600)

    def fail(depth: int) -> None:
        raise RecursionError("maximum recursion depth exceeded") if depth else ValueError("x")

    with caplog.at_level(logging.ERROR, "test.failures"):
        for n in range(1000):
            try:
                fail(1)
            except RecursionError as e:
                log.failed("could not handle a call", e, context=f"POST /v1/x?key=SECRET{n}")
        try:
            fail(0)
        except ValueError as e:
            log.failed("could not handle a call", e)
    assert len(caplog.records) == 2  # one per kind, not one per call
    assert "SECRET" not in caplog.text and "key=***" in caplog.text
    assert sorted(log.counts().values()) == [1, 1000]


def test_the_failure_log_bounds_its_kinds() -> None:
    log = FailureLog(logging.getLogger("test.failures.bound"), max_kinds=4)
    for n in range(50):
        try:
            exec(compile("raise KeyError()", f"file{n}.py", "exec"))
        except KeyError as e:
            log.failed("x", e)
    assert len(log.counts()) <= 5


def test_an_emptied_key_ring_refuses_every_call_instead_of_passing_through() -> None:
    access = Access()
    access.use_keys_file(KeyRing())
    assert not access.keys_required  # a keys file with no keys at start: passthrough (DESIGN.md)
    ring = KeyRing()
    ring.by_name["alice"] = object()  # any key makes the ring non-empty
    access.use_keys(ring)
    access.use_keys(KeyRing())  # the file was emptied while running
    assert access.keys_required
    access.use_keys_file(KeyRing())  # only a new llm_keys setting may turn passthrough back on
    assert not access.keys_required


def _options_with(**declared: type) -> optmanager.OptManager:
    options = optmanager.OptManager()
    for name, typespec in declared.items():
        options.add_option(name, typespec, typespec(), f"help for {name}")
    return options


def test_unparsable_values_are_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    options = optmanager.OptManager()
    options.set("llm_n=abc", "llm_b=maybe", "llm_ok=3", "llm_zzzzzz=1", "other_x=1", defer=True)
    options.add_option("llm_n", int, 0, "a number")
    options.add_option("llm_b", bool, False, "a switch")
    options.add_option("llm_ok", int, 0, "fine")
    with caplog.at_level(logging.ERROR):
        bad = reject_unparsable(options)
        options.process_deferred()  # what mitmproxy does next: must not raise now
        unknown = reject_unknown(options)
    assert [m.split(" is not")[0] for m in bad] == ["llm-proxy: --set llm_n=abc", "llm-proxy: --set llm_b=maybe"]
    assert options.llm_ok == 3 and options.llm_n == 0
    assert unknown == ["llm-proxy: unknown option llm_zzzzzz; `mitmdump --options` lists them"]
    assert "other_x" in options.deferred  # not ours to judge
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3


def test_no_secret_in_the_log_when_the_request_hook_fails(tmp_path, monkeypatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(addon_module, "open_call", boom)
    monkeypatch.setenv("LLM_PROXY_HOME", str(tmp_path))
    flow = tflow.tflow()
    flow.request.host, flow.request.port, flow.request.scheme = "generativelanguage.googleapis.com", 443, "https"
    flow.request.path = "/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaTOPSECRET"
    addon = LLMProxy()
    with caplog.at_level(logging.DEBUG), taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, llm_db=f"sqlite:///{tmp_path / 'rows.db'}", llm_providers=str(DEFAULT_PROVIDERS),
                       llm_pricing=str(DEFAULT_PRICING))
        asyncio.run(addon.request(flow))
        addon.done()
    assert flow.response.status_code == 500
    assert "could not handle a call" in caplog.text
    assert "TOPSECRET" not in caplog.text


@given(st.text(max_size=80))
def test_canonical_host_takes_any_text(host: str) -> None:
    """Hosts come from clients: unicode digits, lone surrogates, brackets, percent signs."""
    assert isinstance(canonical_host(host), str)
    assert isinstance(canonical_host_port(host), tuple)
