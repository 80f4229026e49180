"""Routing by model, retries, fallbacks (within and across formats) and circuit breakers,
end to end: real SDKs, a real mitmdump, a fake upstream told to fail."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, Rows, anthropic_client, new_key, openai_client, scenario, write_providers

REAL_KEYS = {"OPENAI_API_KEY": "sk-real-openai-rescue", "ANTHROPIC_API_KEY": "sk-ant-real-rescue"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rescuer(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str
            ) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("rescue")
    providers = write_providers(tmp / "providers.toml", upstream.url, extra=f"""
[providers.deadai]
base_url = "http://127.0.0.1:{closed_port()}"
format = "openai"

[models."gpt-4o-mini-*"]
fallbacks = ["anthropic:claude-haiku-4-5"]

[models."gpt-4.1-r*"]
fallbacks = ["openai:gpt-4.1-mini"]
retries = 2

[models."claude-sonnet-4-6-*"]
fallbacks = ["openai:gpt-4o-mini"]

[models."dead-*"]
target = "deadai:dead-1"
fallbacks = ["openai:gpt-4o-mini"]

[models.fast]
target = "anthropic:claude-haiku-4-5"

[models."brk-*"]
target = "openai:brk-primary"
fallbacks = ["openai:brk-backup"]

[models."allfail-*"]
fallbacks = ["openai:allfail-backup"]

[models."late-*"]
target = "openai:late-primary"
fallbacks = ["openai:late-backup"]
""")
    text = providers.read_text()
    text = text.replace("[providers.openai]\n", '[providers.openai]\napi_key_env = "OPENAI_API_KEY"\nmodels = ["gpt-*"]\n')
    text = text.replace("[providers.anthropic]\n",
                        '[providers.anthropic]\napi_key_env = "ANTHROPIC_API_KEY"\nmodels = ["claude-*"]\n')
    providers.write_text(text)
    proxy = Proxy(
        ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}", "--set", "llm_attempt_timeout=1",
         "--set", "llm_breaker_failures=2", "--set", "llm_breaker_cooldown=2"],
        confdir=tmp / "conf", env=REAL_KEYS,
    ).start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy
    proxy.stop()


MESSAGES = [{"role": "user", "content": "hi"}]


def unique(prefix: str) -> str:
    """A model name no other test uses, so each test has breakers of its own."""
    return f"{prefix}-{new_key('m')[2:]}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_chat_falls_back_to_an_anthropic_model(rescuer: Proxy, rows: Rows, upstream: FakeUpstream,
                                                      stream: bool) -> None:
    key, model = new_key(), unique("gpt-4o-mini")
    failing = scenario(only_model=model, status=503, input=1000, output=6)
    if stream:
        chunks = list(openai_client(rescuer, key).chat.completions.create(
            model=model, messages=MESSAGES, stream=True, extra_headers=failing))
        assert all(c.choices for c in chunks)  # the usage chunk the proxy asked for stays hidden
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        reply = openai_client(rescuer, key).chat.completions.create(model=model, messages=MESSAGES, extra_headers=failing)
        text = reply.choices[0].message.content
        assert reply.usage.prompt_tokens == 1000 and reply.model == "claude-haiku-4-5"
    assert text == "w0 w1 w2 w3 w4 w5 "
    anthropic_request = [r for r in upstream.requests if r.path == "/v1/messages"
                         and r.headers.get("authorization") is None][-1]
    assert anthropic_request.headers["x-api-key"] == "sk-ant-real-rescue"
    assert anthropic_request.json["model"] == "claude-haiku-4-5" and key not in json.dumps(anthropic_request.headers)
    [row] = rows.wait(key)
    assert (row["provider"], row["api"], row["model"], row["response_model"]) == (
        "anthropic", "openai-chat", model, "claude-haiku-4-5")
    assert (row["status"], row["error"], row["streaming"]) == (200, None, stream)
    assert row["fallback_from"] == f"openai:{model}"
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [("openai", 503), ("anthropic", 200)]
    assert row["attempts"][0]["error"].startswith("HTTP 503")
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 6)
    # Only the attempt that was billed costs: (1000 * 1.0 + 6 * 5.0) / 1e6 at claude-haiku-4-5 prices.
    assert row["cost_usd"] == Decimal("0.00103")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_messages_fall_back_to_an_openai_model(rescuer: Proxy, rows: Rows, stream: bool) -> None:
    key, model = new_key(), unique("claude-sonnet-4-6")
    failing = scenario(only_model=model, status=529, input=300, cached=100, output=4)
    client = anthropic_client(rescuer, key)
    if stream:
        with client.messages.stream(model=model, max_tokens=50, messages=MESSAGES, extra_headers=failing) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model=model, max_tokens=50, messages=MESSAGES, extra_headers=failing)
    assert message.content[0].text == "w0 w1 w2 w3 " and message.stop_reason == "end_turn"
    assert message.usage.cache_read_input_tokens == 100 and message.usage.output_tokens == 4
    [row] = rows.wait(key)
    assert (row["provider"], row["api"], row["response_model"], row["fallback_from"]) == (
        "openai", "anthropic-messages", "gpt-4o-mini", f"anthropic:{model}")
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [("anthropic", 529), ("openai", 200)]
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (300, 100, 4)
    assert row["cost_usd"] == Decimal("0.0000399")  # (200 * 0.15 + 100 * 0.075 + 4 * 0.60) / 1e6


def test_retries_with_backoff_then_the_same_target_succeeds(rescuer: Proxy, rows: Rows) -> None:
    key, model = new_key(), unique("gpt-4.1-r")
    started = time.monotonic()
    reply = openai_client(rescuer, key).chat.completions.create(
        model=model, messages=MESSAGES,
        extra_headers=scenario(fail_first=2, id=key, fail_status=429, retry_after=0.3),
    )
    assert reply.model == model and time.monotonic() - started >= 0.6  # Retry-After honoured twice
    [row] = rows.wait(key)
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [(model, 429), (model, 429), (model, 200)]
    assert row["fallback_from"] is None and row["provider"] == "openai"


def test_retries_exhausted_move_down_the_chain(rescuer: Proxy, rows: Rows) -> None:
    key, model = new_key(), unique("gpt-4.1-r")
    reply = openai_client(rescuer, key).chat.completions.create(
        model=model, messages=MESSAGES, extra_headers=scenario(only_model=model, status=500))
    assert reply.model == "gpt-4.1-mini"
    [row] = rows.wait(key)
    assert [a["status"] for a in row["attempts"]] == [500, 500, 500, 200]
    assert row["fallback_from"] == f"openai:{model}"


@pytest.mark.parametrize("failure", [
    {"first_delay": 3},           # no answer within llm_attempt_timeout
    {"drop_after": 0},            # connection dropped with no answer
    {"error_after": 0},           # a stream that fails before its first output
], ids=["timeout", "dropped", "mid-stream-error"])
def test_timeouts_drops_and_early_stream_errors_fall_back(rescuer: Proxy, rows: Rows, failure: dict) -> None:
    key, model = new_key(), unique("gpt-4o-mini")
    chunks = list(openai_client(rescuer, key).chat.completions.create(
        model=model, messages=MESSAGES, stream=True, extra_headers=scenario(only_model=model, output=3, **failure)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "w0 w1 w2 "
    [row] = rows.wait(key)
    assert row["provider"] == "anthropic" and row["error"] is None
    assert row["attempts"][0]["status"] in (None, 200) and row["attempts"][0]["error"]


@pytest.mark.parametrize(("status", "exception"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError), (422, openai.UnprocessableEntityError),
])
def test_non_retryable_errors_pass_straight_through(rescuer: Proxy, rows: Rows, status: int, exception: type) -> None:
    key = new_key()
    with pytest.raises(exception):
        openai_client(rescuer, key).chat.completions.create(model=unique("gpt-4o-mini"), messages=MESSAGES,
                                                  extra_headers=scenario(status=status))
    [row] = rows.wait(key)
    assert row["status"] == status and [a["status"] for a in row["attempts"]] == [status]


def test_every_target_failing_returns_the_last_failure(rescuer: Proxy, rows: Rows) -> None:
    key = new_key()
    with pytest.raises(openai.InternalServerError) as failed:
        openai_client(rescuer, key).chat.completions.create(model=unique("allfail"), messages=MESSAGES,
                                                  extra_headers=scenario(status=503))
    assert failed.value.status_code == 503
    [row] = rows.wait(key)
    assert [a["status"] for a in row["attempts"]] == [503, 503] and row["cost_usd"] is None


def test_routing_by_model_and_aliases(rescuer: Proxy, rows: Rows, upstream: FakeUpstream) -> None:
    key = new_key()
    by_glob = openai_client(rescuer, key).chat.completions.create(model="claude-haiku-4-5", messages=MESSAGES)
    alias = openai_client(rescuer, key).chat.completions.create(model="fast", messages=MESSAGES)
    assert by_glob.model == alias.model == "claude-haiku-4-5"
    assert upstream.requests[-1].path == "/v1/messages" and upstream.requests[-1].json["model"] == "claude-haiku-4-5"
    with pytest.raises(openai.BadRequestError, match="no route or provider accepts model 'mystery-1'"):
        openai_client(rescuer, key).chat.completions.create(model="mystery-1", messages=MESSAGES)
    glob_row, alias_row, refused = rows.wait(key, 3)
    assert (glob_row["provider"], alias_row["provider"], alias_row["model"]) == ("anthropic", "anthropic", "fast")
    assert refused["status"] == 400 and refused["error"].startswith("llm-proxy answered HTTP 400")


def test_connection_errors_open_the_breaker_at_once(rescuer: Proxy, rows: Rows) -> None:
    key = new_key()
    client = openai_client(rescuer, key)
    assert client.chat.completions.create(model=unique("dead"), messages=MESSAGES).model == "gpt-4o-mini"
    assert client.chat.completions.create(model=unique("dead"), messages=MESSAGES).model == "gpt-4o-mini"
    first, second = rows.wait(key, 2)
    assert first["attempts"][0]["error"].startswith("connection failed")
    assert second["attempts"][0]["error"] == "circuit open: skipped"  # rerouted up front


def test_breaker_opens_reroutes_up_front_and_closes(rescuer: Proxy, rows: Rows, upstream: FakeUpstream) -> None:
    key = new_key()
    client = openai_client(rescuer, key)
    failing = scenario(only_model="brk-primary", status=502)
    for _ in range(2):  # llm_breaker_failures=2
        assert client.chat.completions.create(model="brk-x", messages=MESSAGES, extra_headers=failing
                                              ).model == "brk-backup"
    before = len(upstream.requests)
    stream = list(client.chat.completions.create(model="brk-x", messages=MESSAGES, stream=True,
                                                 extra_headers=failing))
    assert stream[0].model == "brk-backup"
    assert [r.json["model"] for r in upstream.requests[before:]] == ["brk-backup"]  # primary not tried
    time.sleep(2.2)  # cooldown: the next call is the half-open probe; the primary is healthy again
    assert client.chat.completions.create(model="brk-x", messages=MESSAGES).model == "brk-primary"
    assert client.chat.completions.create(model="brk-x", messages=MESSAGES).model == "brk-primary"
    rows_ = rows.wait(key, 5)
    assert [r["attempts"][0]["error"] for r in rows_][2] == "circuit open: skipped"
    assert [len(r["attempts"]) for r in rows_] == [2, 2, 2, 1, 1]
    assert "circuit for openai:brk-primary opened" in rescuer.log
    assert "circuit for openai:brk-primary closed again" in rescuer.log


def test_a_rescued_stream_is_still_streamed(rescuer: Proxy) -> None:
    """The fallback's events reach the client as they arrive, not as one block."""
    model = unique("gpt-4o-mini")
    started, arrivals = time.monotonic(), []
    for _ in openai_client(rescuer, new_key()).chat.completions.create(
            model=model, messages=MESSAGES, stream=True,
            extra_headers=scenario(only_model=model, status=503, output=5, delay=0.2)):
        arrivals.append(time.monotonic() - started)
    assert arrivals[-1] - arrivals[0] > 0.8 and arrivals[0] < 0.5


def test_a_relayed_stream_read_by_the_sdk_keeps_its_usage(rescuer: Proxy, rows: Rows) -> None:
    """The openai SDK hangs up as soon as it reads [DONE]; with slow chunks that used to beat the
    relay's own end of stream, leaving the row with NULL tokens and "Client disconnected."."""
    key = new_key()
    client = openai_client(rescuer, key)
    for _ in range(4):
        model = unique("gpt-4o-mini")  # has fallbacks: the relay carries it
        chunks = list(client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_headers=scenario(input=120, output=6, delay=0.15)))
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 120
    for row in rows.wait(key, 4):
        assert (row["input_tokens"], row["output_tokens"], row["error"]) == (120, 6, None)
        assert row["response_model"]
        assert row["attempts"][0]["input_tokens"] == 120


def test_a_failure_after_the_first_output_counts_against_the_breaker(rescuer: Proxy, rows: Rows,
                                                                     upstream: FakeUpstream) -> None:
    key = new_key()
    client = openai_client(rescuer, key)
    failing = scenario(only_model="late-primary", output=8, error_after=3)
    for _ in range(2):  # llm_breaker_failures=2: two failures mid-stream open it
        with pytest.raises(openai.APIError):
            for _chunk in client.chat.completions.create(model="late-x", messages=MESSAGES, stream=True,
                                                         extra_headers=failing):
                pass
    before = len(upstream.requests)
    chunks = list(client.chat.completions.create(model="late-x", messages=MESSAGES, stream=True,
                                                 extra_headers=failing))
    assert chunks[0].model == "late-backup"
    assert [r.json["model"] for r in upstream.requests[before:]] == ["late-backup"]  # primary skipped up front
    first, second, third = rows.wait(key, 3)
    assert first["error"] and second["error"]
    assert third["attempts"][0]["error"] == "circuit open: skipped"
