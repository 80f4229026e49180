"""Who may call the control plane, decided without a proxy; CORS origins; dashboard file names; parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitmproxy.test import tutils

from llm_proxy.control import auth, cors, static
from llm_proxy.control.params import BadParameter, parse_time, requests_query, usage_query
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret

SECRET = "llmp-" + "a" * 43
RING = KeyRing([VirtualKey(name="alice", hash=hash_secret(SECRET))])
ADMIN = "admin-key-0123456789"
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.2", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
    ("", False), (None, False), ("not-an-ip", False),
])
def test_loopback(address, loopback):
    assert auth.is_loopback(address) is loopback


def test_admin_key_admits_the_admin_anywhere():
    assert auth.identify(ADMIN, ADMIN, "192.0.2.2", RING) == auth.Caller()


def test_wrong_or_missing_key_is_401_even_on_loopback_when_a_key_is_set():
    assert auth.identify("nope", ADMIN, "127.0.0.1", RING) == auth.Denied(401, "wrong admin key")
    assert auth.identify(None, ADMIN, "127.0.0.1", RING).status == 401


def test_without_admin_key_loopback_is_admin_and_others_are_told_to_set_it():
    assert auth.identify(None, "", "127.0.0.1", RING) == auth.Caller()
    denied = auth.identify(None, "", "192.0.2.2", RING)
    assert denied.status == 403 and "llm_admin_key" in denied.message
    assert auth.identify("guess", "", "192.0.2.2", RING).status == 403


def test_a_virtual_key_is_itself_and_only_on_its_own_path():
    for admin_key, address in ((ADMIN, "192.0.2.2"), ("", "192.0.2.2"), ("", "127.0.0.1")):
        caller = auth.identify(SECRET, admin_key, address, RING)
        assert caller == auth.Caller(RING.by_name["alice"])
        assert auth.authorize(caller, admin_only=False) is None
        assert auth.authorize(caller, admin_only=True).status == 403


def test_bearer():
    assert auth.bearer("Bearer abc") == "abc"
    assert auth.bearer("bearer  abc ") == "abc"
    assert auth.bearer("Basic abc") is None
    assert auth.bearer("Bearer ") is None
    assert auth.bearer(None) is None


# --- CORS -----------------------------------------------------------------------------------------

def test_origins_parse_and_refuse_what_is_not_an_origin():
    policy = cors.parse_origins("https://App.example.com, http://localhost:3000")
    assert policy.allows("https://app.example.com") and policy.allows("http://localhost:3000")
    assert not policy.allows("https://evil.example.com") and not policy.allows(None)
    assert cors.parse_origins("*").allows("https://anything.example")
    assert not cors.parse_origins("").enabled
    for bad in ("app.example.com", "https://app.example.com/path", "ftp://x", "https://*.example.com"):
        with pytest.raises(cors.CorsError, match="is not an origin"):
            cors.parse_origins(bad)


def test_preflight_grants_only_allowed_origins():
    policy = cors.parse_origins("https://app.example.com")
    request = tutils.treq(method=b"OPTIONS", headers=((b"origin", b"https://app.example.com"),
                                                      (b"access-control-request-method", b"POST"),
                                                      (b"access-control-request-headers", b"authorization")))
    assert cors.is_preflight(request)
    granted = cors.preflight_response(policy, request)
    assert granted.status_code == 204
    assert granted.headers["access-control-allow-origin"] == "https://app.example.com"
    assert granted.headers["access-control-allow-headers"] == "authorization"
    request.headers["origin"] = "https://evil.example.com"
    refused = cors.preflight_response(policy, request)
    assert "access-control-allow-origin" not in refused.headers


def test_response_headers_keep_an_existing_vary():
    policy = cors.parse_origins("https://app.example.com")
    request = tutils.treq(headers=((b"origin", b"https://app.example.com"),))
    response = tutils.tresp(headers=((b"vary", b"Accept-Encoding"),))
    cors.add_headers(policy, request, response)
    cors.add_headers(policy, request, response)
    assert response.headers["vary"] == "Accept-Encoding, Origin"
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"


# --- dashboard files --------------------------------------------------------------------------------

def test_static_serves_plain_names_only(tmp_path: Path):
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.toml").write_text("x")
    (tmp_path.parent / "outside.js").write_text("x")
    assert static.asset("app.js", tmp_path) == (b"console.log(1)", "text/javascript; charset=utf-8")
    for name in ("../outside.js", "..%2foutside.js", "secret.toml", ".hidden.js", "sub/app.js", "missing.js",
                 "/etc/passwd", ""):
        assert static.asset(name, tmp_path) is None, name


# --- parameters --------------------------------------------------------------------------------------

def test_times_relative_and_absolute():
    assert parse_time("since", "90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_time("since", "7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("since", "2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("since", "2026-11-01T12:00:00", NOW) == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert parse_time("since", "2026-11-01T12:00:00+02:00", NOW) == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_time("since", "2026-11-01T12:00:00Z", NOW) == datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_usage_defaults_and_bad_values_name_the_parameter():
    query = usage_query({}, NOW)
    assert (query.since, query.until, query.group_by) == (NOW - timedelta(days=30), NOW, ())
    assert usage_query({"group_by": ["day,key"]}, NOW).group_by == ("day", "key")
    for params, name in (({"since": ["5y"]}, "since"), ({"until": ["soon"]}, "until"),
                         ({"group_by": ["key,week"]}, "group_by"), ({"group_by": ["key,key"]}, "group_by"),
                         ({"keys": ["a"]}, "keys"), ({"since": ["1h"], "until": ["2h"]}, "since"),
                         ({"key": ["a", "b"]}, "key")):
        with pytest.raises(BadParameter) as e:
            usage_query(params, NOW)
        assert e.value.name == name and str(e.value).startswith(f"{name}: ")


def test_requests_limits():
    assert requests_query({}, NOW).limit == 50
    assert requests_query({"limit": ["500"], "before": ["17"], "status": ["429"]}, NOW).before == 17
    for params, name in (({"limit": ["501"]}, "limit"), ({"limit": ["0"]}, "limit"), ({"before": ["x"]}, "before"),
                         ({"status": ["99"]}, "status"), ({"model": ["a"], "group_by": ["key"]}, "group_by")):
        with pytest.raises(BadParameter) as e:
            requests_query(params, NOW)
        assert e.value.name == name


def test_metrics_labels_from_clients_are_bounded() -> None:
    """Invented model names and unknown keys must not grow the proxy (one series each, forever)."""
    import gc
    import tracemalloc
    from datetime import UTC, datetime

    from llm_proxy.addon import LLMProxy
    from llm_proxy.control.metrics import MAX_LABEL_VALUES, Metrics
    from llm_proxy.record import Record

    metrics = Metrics(LLMProxy())

    def call(n: int) -> Record:
        return Record(request_id=str(n), ts=datetime.now(UTC), provider="openai", model=f"invented-{n}",
                      key_id=f"fp-{n:012x}", status=200, input_tokens=1, output_tokens=1)
    for n in range(MAX_LABEL_VALUES):
        metrics.observe(call(n))
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(MAX_LABEL_VALUES, MAX_LABEL_VALUES + 5000):
        metrics.observe(call(n))
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 100_000, grown  # was about 18 MB: two new series per call
    assert b'model="other"' in metrics.render()
