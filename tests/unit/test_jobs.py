"""The jobs package as plain functions: signing, SSRF classification, retry schedule, queue, alerts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from llm_proxy.jobs import credentials, signing
from llm_proxy.jobs.submission import wants_async
from llm_proxy.jobs.alerts import alert_period, crossed
from llm_proxy.jobs.ssrf import WebhookURLError, check_url, numeric_host, parse_url, refusal
from llm_proxy.jobs.store import JobStore, NewJob
from llm_proxy.jobs.webhooks import RETRY_FACTORS, Sender, schedule
from llm_proxy.storage.dsn import parse_db_url


# --- signing ---------------------------------------------------------------------------

def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"job_1","status":"completed"}'
    header = signing.signature("s3cret", body, 1_700_000_000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signing.verify("s3cret", body, header, now=1_700_000_010)
    assert not signing.verify("other", body, header, now=1_700_000_010)
    assert not signing.verify("s3cret", body + b" ", header, now=1_700_000_010)
    assert not signing.verify("s3cret", body, header, now=1_700_000_000 + 301)  # too old: a replay
    assert not signing.verify("s3cret", body, "garbage", now=1_700_000_000)


def test_secret_is_used_as_raw_utf8() -> None:
    header = signing.signature("clé", b"x", 5)
    assert header.endswith(hmac.new("clé".encode(), b"5.x", hashlib.sha256).hexdigest())


# --- retry schedule ----------------------------------------------------------------------

def test_default_schedule_meets_the_contract() -> None:
    waits = schedule(3.0)
    assert waits[0] <= 5  # first retry within 5 s
    assert waits[1] <= 30  # second within 30 s of the first
    assert all(b == 2 * a for a, b in zip(waits[1:], waits[2:]))  # then exponential
    assert len(waits) + 1 >= 6  # tries
    assert sum(waits) >= 300  # over at least 5 minutes
    assert schedule(0.01) == tuple(0.01 * f for f in RETRY_FACTORS)


def test_delivery_retries_until_2xx_and_gives_up_after_the_schedule() -> None:
    answers = ["HTTP 500", "HTTP 500", None]
    calls: list[str] = []

    async def run(sender: Sender) -> tuple[object, object]:
        async def try_once(url: str, body: bytes) -> str | None:
            calls.append(url)
            return answers.pop(0) if answers else "HTTP 503"
        sender.try_once = try_once  # type: ignore[method-assign]
        first = await sender.deliver("http://x/", b"{}")
        second = await sender.deliver("http://x/", b"{}")
        await sender.close()
        return first, second

    sender = Sender(secret="s", allow_private=True, unit_seconds=0.001)
    first, second = asyncio.run(run(sender))
    assert (first.delivered, first.tries) == (True, 3)  # type: ignore[attr-defined]
    assert (second.delivered, second.tries, second.error) == (False, 7, "HTTP 503")  # type: ignore[attr-defined]
    assert len(calls) == 10


def test_delivery_refuses_a_private_address_without_connecting() -> None:
    async def run() -> object:
        sender = Sender(secret="s", allow_private=False, unit_seconds=0.001)
        try:
            return await sender.deliver("http://127.0.0.1:9/hook", b"{}")
        finally:
            await sender.close()
    outcome = asyncio.run(run())
    assert not outcome.delivered and outcome.tries == 1  # type: ignore[attr-defined]
    assert "loopback" in outcome.error  # type: ignore[attr-defined]


# --- SSRF ----------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200", "0.0.0.0",
    "::1", "fe80::1", "fc00::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::",
    "64:ff9b::a00:1", "::127.0.0.1", "224.0.0.1", "100.64.0.1", "198.18.0.1",
])
def test_refused_addresses(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host,address", [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0xa.1", "10.0.0.1"), ("[::ffff:7f00:1]", "::ffff:127.0.0.1"), ("example.com", None),
])
def test_numeric_hosts_read_as_a_connection_reads_them(host: str, address: str | None) -> None:
    found = numeric_host(host)
    assert (str(found) if found else None) == address


def _resolver(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]
    return resolve


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://10.0.0.5:8080/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://2130706433/", "http://0x7f.1/", "http://localhost.test/",
    "http://mixed.test/",
])
def test_check_url_refuses(url: str) -> None:
    resolver = _resolver({"localhost.test": ["127.0.0.1"], "mixed.test": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(WebhookURLError, match="refused"):
        asyncio.run(check_url(url, allow_private=False, resolver=resolver))


def test_check_url_accepts_and_pins() -> None:
    resolver = _resolver({"hooks.test": ["93.184.216.34"]})
    target = asyncio.run(check_url("https://hooks.test:8443/in?x=1", allow_private=False, resolver=resolver))
    assert target.pinned_url() == "https://93.184.216.34:8443/in?x=1"
    assert target.host_header == "hooks.test:8443"
    local = asyncio.run(check_url("http://127.0.0.1:9/", allow_private=True, resolver=resolver))
    assert local.addresses == ("127.0.0.1",)


@pytest.mark.parametrize("url", ["ftp://x/", "http://user:pw@x/", "http:///nohost", "http://x/#frag", "", "http://a b/",
                                 "http://x:99999/"])
def test_parse_url_refuses_malformed(url: str) -> None:
    with pytest.raises(WebhookURLError):
        parse_url(url)


# --- queue ---------------------------------------------------------------------------

def _job(n: int, node: str = "n1", webhook: str | None = None) -> NewJob:
    return NewJob(id=f"job_{n}", node=node, created=datetime.now(UTC), key_id="k", mode="reverse:x", method="POST",
                  scheme="http", host="h", port=80, path="/v1/chat/completions", headers=[["x-a", "b"]],
                  body=b'{"model":"m"}', needs_credential=False, credential=None, webhook=webhook)


def _run(store: JobStore, work):  # noqa: ANN001, ANN202
    return asyncio.run(store.run(work))


def test_queue_order_position_cancel_and_recovery(tmp_path: Path) -> None:
    store = JobStore(parse_db_url(f"sqlite:///{tmp_path / 'db.sqlite'}"), "llm_requests")
    try:
        for n in range(5):
            _run(store, lambda s, n=n: s.insert(_job(n)))
        _run(store, lambda s: s.insert(_job(99, node="other")))
        assert [_run(store, lambda s, n=n: s.get(f"job_{n}")).queue_position for n in range(5)] == [1, 2, 3, 4, 5]
        assert [r.id for r in _run(store, lambda s: s.next_queued("n1", 3))] == ["job_0", "job_1", "job_2"]
        moment = datetime.now(UTC)
        assert _run(store, lambda s: s.claim("job_0", moment))
        assert not _run(store, lambda s: s.claim("job_0", moment))  # already running
        assert _run(store, lambda s: s.cancel("job_0", moment)) == "running"  # the API answers 409
        assert _run(store, lambda s: s.cancel("job_2", moment)) == "cancelled"
        assert _run(store, lambda s: s.cancel("job_nope", moment)) is None
        assert not _run(store, lambda s: s.claim("job_2", moment))  # a cancelled job never starts
        assert [_run(store, lambda s, n=n: s.get(f"job_{n}")).queue_position for n in (1, 3, 4)] == [1, 2, 3]
        _run(store, lambda s: s.started_call("job_0", "req-a"))
        # A restart: the running job runs once more, marked; a second interruption fails it.
        assert _run(store, lambda s: s.recover("n1", moment)) == (1, 0)
        row = _run(store, lambda s: s.get("job_0"))
        assert (row.status, row.rerun, row.queue_position) == ("queued", True, 1)
        assert row.attempts[0]["request_id"] == "req-a" and "interrupted" in row.attempts[0]["outcome"]
        assert _run(store, lambda s: s.claim("job_0", moment))
        assert _run(store, lambda s: s.recover("n1", moment)) == (0, 1)
        assert _run(store, lambda s: s.get("job_0")).status == "failed"
        _run(store, lambda s: s.finish("job_1", "completed", moment, response_status=200, response_body=b"{}",
                                       error=None, attempt={"request_id": "req-b"}))
        assert _run(store, lambda s: s.get("job_1")).attempts == [{"request_id": "req-b"}]
        assert _run(store, lambda s: s.expire(moment + timedelta(seconds=1))) == 3  # job_0, job_1, job_2
        assert _run(store, lambda s: s.queued_count("n1")) == 2
    finally:
        store.close()


def test_webhook_state_and_alert_rows(tmp_path: Path) -> None:
    store = JobStore(parse_db_url(f"sqlite:///{tmp_path / 'db.sqlite'}"), "llm_requests")
    try:
        moment = datetime.now(UTC)
        _run(store, lambda s: s.insert(_job(1, webhook="http://h/")))
        assert _run(store, lambda s: s.pending_webhooks("n1")) == []  # not finished yet
        _run(store, lambda s: s.finish("job_1", "failed", moment, response_status=None, response_body=None,
                                       error="boom", attempt=None))
        assert [r.id for r in _run(store, lambda s: s.pending_webhooks("n1"))] == ["job_1"]
        _run(store, lambda s: s.webhook_progress("job_1", 7, "HTTP 500", "failed"))
        row = _run(store, lambda s: s.get("job_1"))
        assert (row.webhook_status, row.webhook_tries) == ("failed", 7)
        start = alert_period("monthly", moment)
        assert _run(store, lambda s: s.alert_once("k", start, 50, Decimal("1.5"), moment))
        assert not _run(store, lambda s: s.alert_once("k", start, 50, Decimal("1.6"), moment))
        assert _run(store, lambda s: s.alert_once("k", start, 80, Decimal("1.6"), moment))
    finally:
        store.close()


# --- alerts, credentials, Prefer ----------------------------------------------------

def test_thresholds_crossed() -> None:
    assert crossed(Decimal("0.49"), Decimal(1)) == []
    assert crossed(Decimal("0.5"), Decimal(1)) == [50]
    assert crossed(Decimal("0.8"), Decimal(1)) == [50, 80]
    assert crossed(Decimal("1.2"), Decimal(1)) == [50, 80, 100]
    assert crossed(Decimal(5), Decimal(0)) == []


def test_alert_periods() -> None:
    moment = datetime(2026, 3, 17, 15, 4, tzinfo=UTC)
    assert alert_period("monthly", moment) == datetime(2026, 3, 1, tzinfo=UTC)
    day = alert_period("1d", moment)
    assert day == datetime(2026, 3, 17, tzinfo=UTC)
    assert alert_period("7d", moment) <= moment < alert_period("7d", moment) + timedelta(days=7)


def test_credentials_are_sealed_to_their_job() -> None:
    credential = credentials.Credential((("authorization", "Bearer sk-secret"),), "/v1/x?key=abc")
    sealed = credentials.seal("s3cret", "job_1", credential)
    assert b"sk-secret" not in sealed
    assert credentials.unseal("s3cret", "job_1", sealed) == credential
    assert credentials.unseal("s3cret", "job_2", sealed) is None  # moved to another job
    assert credentials.unseal("changed", "job_1", sealed) is None


@pytest.mark.parametrize("header,expected", [
    ("respond-async", True), ("wait=10, respond-async", True), ("Respond-Async; x=1", True),
    ("return=minimal", False), ("respond-asynchronously", False), ("", False),
])
def test_prefer_header(header: str, expected: bool) -> None:
    assert wants_async(header) is expected


# --- runner --------------------------------------------------------------------------

def test_runner_starts_in_order_within_its_concurrency_and_the_gate(tmp_path: Path) -> None:
    from llm_proxy.jobs.runner import Request, Result, Runner
    from llm_proxy.limits.gate import Gate

    store = JobStore(parse_db_url(f"sqlite:///{tmp_path / 'db.sqlite'}"), "llm_requests")
    started: list[str] = []
    ended: list[str] = []

    async def scenario() -> None:
        gate = Gate(limit=1, max_waiting=10, timeout=0.05)
        release = asyncio.Event()
        runner = Runner(store, "n1", 2, lambda: gate, lambda job: Request("http://unused/", [], b""),
                        lambda job_id: job_id, lambda job_id: _record(ended, job_id))

        async def send(job, request):  # noqa: ANN001, ANN202
            started.append(job.id)
            await release.wait()
            return Result("completed", 200, b"{}")
        runner._send = send  # type: ignore[method-assign]
        for n in range(4):
            await store.run(lambda s, n=n: s.insert(_job(n)))
        await runner.fill()
        await asyncio.sleep(0.05)
        assert started == ["job_0"] and gate.active == 1  # the gate (1 slot) binds before concurrency (2)
        assert (await store.run(lambda s: s.get("job_1"))).queue_position == 1
        gate.limit = 5
        await runner.fill()
        await asyncio.sleep(0.05)
        assert started == ["job_0", "job_1"] and len(runner.active) == 2  # now concurrency binds
        assert await store.run(lambda s: s.cancel("job_2", datetime.now(UTC))) == "cancelled"
        release.set()
        for _ in range(100):
            await runner.fill()
            await asyncio.sleep(0.01)
            if len(ended) == 3:
                break
        assert started == ["job_0", "job_1", "job_3"] and sorted(ended) == ["job_0", "job_1", "job_3"]
        assert gate.active == 0 and not runner.active  # every slot given back
        row = await store.run(lambda s: s.get("job_3"))
        assert row.status == "completed" and row.response_status == 200
        runner.stop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


async def _record(ended: list[str], job_id: str) -> None:
    ended.append(job_id)


def test_a_job_row_holds_no_credential() -> None:
    from mitmproxy.test import tflow

    from llm_proxy.jobs.submission import credential_of, new_job

    flow = tflow.tflow()
    request = flow.request
    request.path = "/v1beta/models/g:generateContent?alt=json&key=AIza-secret"
    request.headers.update({"authorization": "Bearer sk-secret", "x-api-key": "sk-other", "prefer": "respond-async",
                            "llm-webhook": "https://h/", "anthropic-version": "2023-06-01", "cookie": "s=1"})
    credential = credential_of(request)
    assert dict(credential.headers) == {"authorization": "Bearer sk-secret", "x-api-key": "sk-other"}
    assert credential.path == request.path
    for secret in ("", "s3cret"):
        job = new_job("job_1", "n", "reverse:x", request, key_id="fp-1", credential=credential, secret=secret,
                      webhook="https://h/")
        stored = repr((job.path, job.headers, job.body, job.credential))
        assert "secret" not in stored.replace("s3cret", "") and "sk-other" not in stored
        assert job.path == "/v1beta/models/g:generateContent?alt=json"
        assert ["anthropic-version", "2023-06-01"] in job.headers and job.needs_credential
        assert (job.credential is None) == (secret == "")
