"""Async calls end to end: real mitmdump processes, the openai SDK and httpx, real PostgreSQL
(a schema per module), and a local webhook receiver that checks every signature."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llm_proxy.redact import fingerprint
from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, Rows, new_key, scenario, write_providers
from .jobs_support import SECRET, Held, Receiver, drop_schema, job, schema_url, submit, verify, wait_job

TABLE = "llm_requests"
ADMIN = "a" * 20


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[str]:
    schema, url = schema_url(pg_url)
    yield url
    drop_schema(pg_url, schema)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.stop()


def proxy_args(upstream: FakeUpstream, tmp: Path, db: str, *extra: str, held: Held | None = None) -> list[str]:
    # "held" (path /held/...) answers when the test lets it.
    more = f'\n[providers.held]\nbase_url = "{held.url}"\nformat = "openai"\nhosts = ["held.invalid"]\n' if held else ""
    providers = write_providers(tmp / "providers.toml", upstream.url, more)
    return ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}", "--set", f"llm_db={db}",
            "--set", f"llm_table={TABLE}", "--set", f"llm_webhook_secret={SECRET}", *extra]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, db: str, held: Held) -> Iterator[Proxy]:
    """Passthrough, one job at a time, local webhooks allowed, a quick retry schedule."""
    tmp = tmp_path_factory.mktemp("jobs")
    p = Proxy(proxy_args(upstream, tmp, db, "--set", "llm_jobs_concurrent=1", "--set", "llm_webhook_allow_private=true",
                         "--set", "llm_webhook_retry_ms=5", "--set", "llm_webhook_timeout=1", held=held),
              confdir=tmp / "conf").start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p
    p.stop()


def test_submit_poll_complete_with_one_row_and_a_signed_webhook(proxy: Proxy, db: str, receiver: Receiver) -> None:
    key = new_key()
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"prefer": "respond-async", "llm-webhook": f"{receiver.url}/ok", **scenario(output=3)})
    assert raw.status_code == 202
    accepted = raw.http_response.json()
    job_id = accepted["id"]
    assert job_id.startswith("job_") and accepted["status"] == "queued"
    assert raw.headers["location"] == accepted["status_url"] == f"/_llm/jobs/{job_id}"
    done = wait_job(proxy.url, job_id)
    assert done["status"] == "completed", done
    assert done["response"]["status"] == 200
    assert done["response"]["body"]["choices"][0]["message"]["content"] == "w0 w1 w2 "
    assert done["created"] <= done["started"] <= done["finished"]
    rows = Rows(db, TABLE).wait(key)  # exactly one row, linked by request_id
    assert rows[0]["request_id"] == done["request_id"] == done["attempts"][0]["request_id"]
    assert rows[0]["key_id"] == fingerprint(key) == done["key"] and rows[0]["status"] == 200
    (hit,) = receiver.wait("/ok", 1)
    assert verify(SECRET, hit.body, hit.headers["llm-signature"])
    assert hit.json == {"id": job_id, "status": "completed", "response": done["response"]}
    assert wait_job(proxy.url, job_id)["webhook"] == "delivered"
    assert key not in proxy.log


def test_stream_with_respond_async_is_a_400(proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=new_key(), max_retries=0)
    with pytest.raises(openai.BadRequestError, match="streamed call"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       stream=True, extra_headers={"prefer": "respond-async"})


def test_queue_order_position_and_cancel(proxy: Proxy, db: str, held: Held) -> None:
    key = new_key()
    slow = submit(proxy.url, key, path="/held/v1/chat/completions").json()["id"]  # runs until released
    wait_job(proxy.url, slow, until=("running",))
    waiting = [submit(proxy.url, key).json()["id"] for _ in range(3)]
    assert [job(proxy.url, j).json()["queue_position"] for j in waiting] == [1, 2, 3]
    gone = httpx.delete(f"{proxy.url}/_llm/jobs/{waiting[1]}")
    assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
    running = httpx.delete(f"{proxy.url}/_llm/jobs/{slow}")
    assert running.status_code == 409 and "running" in running.json()["error"]["message"]
    assert [job(proxy.url, j).json()["queue_position"] for j in (waiting[0], waiting[2])] == [1, 2]
    assert httpx.delete(f"{proxy.url}/_llm/jobs/job_{'0' * 32}").status_code == 404
    held.release.set()
    ends = [wait_job(proxy.url, j) for j in (slow, waiting[0], waiting[2])]
    assert [e["status"] for e in ends] == ["completed"] * 3
    assert ends[0]["finished"] <= ends[1]["started"] <= ends[1]["finished"] <= ends[2]["started"]  # in order, one at a time
    assert httpx.delete(f"{proxy.url}/_llm/jobs/{slow}").status_code == 409  # finished
    assert wait_job(proxy.url, waiting[1])["started"] is None  # cancelled: never ran
    assert len(Rows(db, TABLE).wait(key, 3)) == 3
    assert ends[0]["response"]["body"]["choices"][0]["message"]["content"] == "late"


def test_webhook_retried_until_2xx_and_abandoned_when_it_never_answers(proxy: Proxy, receiver: Receiver) -> None:
    key = new_key()
    flaky = submit(proxy.url, key, webhook=f"{receiver.url}/flaky/a").json()["id"]
    hang = submit(proxy.url, key, webhook=f"{receiver.url}/hang").json()["id"]
    hits = receiver.wait("/flaky/a", 3)
    assert len(hits) == 3 and all(verify(SECRET, h.body, h.headers["llm-signature"]) for h in hits)
    assert {h.json["id"] for h in hits} == {flaky}
    deadline = time.monotonic() + 30
    while job(proxy.url, flaky).json()["webhook"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.1)
    flaky_job = job(proxy.url, flaky).json()
    assert (flaky_job["webhook"], flaky_job["webhook_tries"]) == ("delivered", 3)
    while job(proxy.url, hang).json()["webhook"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    hang_job = job(proxy.url, hang).json()
    assert (hang_job["webhook"], hang_job["webhook_tries"]) == ("failed", 7), hang_job
    assert len(receiver.on("/hang")) == 7
    # the schedule's shape, scaled down (unit 5 ms): waits of 1, 8, 16, ... units plus each try's timeout
    times = [h.at for h in receiver.on("/flaky/a")]
    assert times[1] - times[0] >= 0.005 and times[2] - times[1] >= 0.04


def test_forged_job_marker_is_refused(proxy: Proxy) -> None:
    answer = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini"},
                        headers={"authorization": f"Bearer {new_key()}", "x-llm-proxy-job": "job_1 guess"})
    assert answer.status_code == 403


# --- keys mode: ownership, SSRF refusals --------------------------------------------

@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, db: str, receiver: Receiver
          ) -> Iterator[tuple[Proxy, dict[str, str]]]:
    from llm_proxy.keys import admin
    tmp = tmp_path_factory.mktemp("jobs-keys")
    keys_file = tmp / "keys.toml"
    secrets_ = {name: admin.create_key(keys_file, name, {})[1] for name in ("alice", "bob")}
    secrets_["carol"] = admin.create_key(keys_file, "carol", admin.parse_changes({"budget": "0.000001"}))[1]
    secrets_["dave"] = admin.create_key(keys_file, "dave", {})[1]
    keyed_held = Held()
    p = Proxy(proxy_args(upstream, tmp, db, "--set", f"llm_keys={keys_file}", "--set", "llm_admin_key=" + ADMIN,
                         "--set", "llm_jobs_node=keyed", "--set", f"llm_alert_webhook={receiver.url}/alert-refused",
                         "--set", "llm_jobs_concurrent=1", held=keyed_held),
              confdir=tmp / "conf").start()
    p.wait_for_log("llm-proxy writing rows to")
    p.held = keyed_held  # type: ignore[attr-defined]
    yield p, secrets_
    keyed_held.stop()
    p.stop()


def test_a_job_is_seen_by_its_key_and_the_admin_only(keyed: tuple[Proxy, dict[str, str]], db: str) -> None:
    proxy, keys = keyed
    job_id = submit(proxy.url, keys["alice"]).json()["id"]
    done = wait_job(proxy.url, job_id, keys["alice"])
    assert done["status"] == "completed" and done["key"] == "alice"
    (row,) = Rows(db, TABLE).wait_for("request_id = %s", (done["request_id"],))
    assert row["key_id"] == "alice"
    assert job(proxy.url, job_id, keys["bob"]).status_code == 404
    assert httpx.delete(f"{proxy.url}/_llm/jobs/{job_id}", headers={"authorization": f"Bearer {keys['bob']}"}
                        ).status_code == 404
    assert job(proxy.url, job_id, ADMIN).status_code == 200
    assert job(proxy.url, job_id).status_code == 401
    assert job(proxy.url, job_id, "llmp-not-a-key").status_code == 401
    refused = submit(proxy.url, "llmp-not-a-key")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "localhost", "[::1]",
                                  "[::ffff:127.0.0.1]", "2130706433", "0x7f.1"])
def test_private_webhooks_are_refused_at_submission(keyed: tuple[Proxy, dict[str, str]], host: str) -> None:
    proxy, keys = keyed
    answer = submit(proxy.url, keys["alice"], webhook=f"http://{host}:8080/hook")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "webhook_refused" and "refused" in answer.json()["error"]["message"]


def test_alert_to_a_private_address_is_refused_at_delivery(keyed: tuple[Proxy, dict[str, str]],
                                                           receiver: Receiver) -> None:
    proxy, keys = keyed
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=keys["carol"], max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers=scenario(input=1000, output=1000))
    proxy.wait_for_log("refused at delivery")
    time.sleep(0.3)
    assert receiver.on("/alert-refused") == []


def test_a_queued_job_runs_as_its_key_is_when_it_runs(keyed: tuple[Proxy, dict[str, str]], db: str) -> None:
    """The job keeps only the key's name; its call is checked like any call when it runs: a key
    disabled while the job waited gets the proxy's 403, in the job and in its row."""
    proxy, keys = keyed
    blocker = submit(proxy.url, keys["alice"], path="/held/v1/chat/completions").json()["id"]
    wait_job(proxy.url, blocker, keys["alice"], until=("running",))
    queued = submit(proxy.url, keys["dave"]).json()["id"]
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.patch(f"{proxy.url}/_llm/api/keys/dave", json={"disabled": True}, headers=admin).status_code == 200
    proxy.held.release.set()  # type: ignore[attr-defined]
    done = wait_job(proxy.url, queued, ADMIN)
    assert done["status"] == "failed" and done["response"]["status"] == 403
    assert done["response"]["body"]["error"]["code"] == "key_disabled"
    (row,) = Rows(db, TABLE).wait_for("request_id = %s", (done["request_id"],))
    assert (row["key_id"], row["status"]) == ("dave", 403)
    assert wait_job(proxy.url, blocker, ADMIN)["status"] == "completed"
