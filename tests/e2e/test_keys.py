"""Virtual keys end to end: keys made with the real CLI, a real mitmdump in keys mode,
SDK exception classes for every refusal, real keys swapped in, limits under load."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import psycopg
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, Rows, drop_table, scenario, write_providers

CLI = Path(sys.executable).with_name("llm-proxy")
REAL_KEYS = {"OPENAI_API_KEY": "sk-real-openai-0d9e", "ANTHROPIC_API_KEY": "sk-ant-real-77aa",
             "GEMINI_API_KEY": "AIza-real-gemini-5c1f"}


def cli(keys_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "keys", "--keys-file", str(keys_file), *args],
                          capture_output=True, text=True, timeout=30)


def create(keys_file: Path, name: str, *flags: str) -> str:
    done = cli(keys_file, "create", name, *flags)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert done.stdout == secret + "\n" and secret.startswith("llmp-")  # the secret alone on stdout
    return secret


def chat(proxy: Proxy, key: str, model: str = "gpt-4o-mini", **fake: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], extra_headers=scenario(**fake)
    )


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str
          ) -> Iterator[tuple[Proxy, Path, dict[str, str]]]:
    """A proxy in keys mode and the secrets of its keys, by name."""
    tmp = tmp_path_factory.mktemp("keys")
    keys_file = tmp / "keys.toml"
    secrets = {
        "alice": create(keys_file, "alice"),
        "gone": create(keys_file, "gone"),
        "old": create(keys_file, "old", "--expires", "2020-01-31"),
        "mini": create(keys_file, "mini", "--models", "gpt-4o-mini*", "claude-haiku-*"),
        "rpm": create(keys_file, "rpm", "--rpm", "10"),
        "tpm": create(keys_file, "tpm", "--tpm", "100"),
        "par": create(keys_file, "par", "--parallel", "2"),
        "budget": create(keys_file, "budget", "--budget", "0.001", "--period", "1d"),
        "reload": create(keys_file, "reload"),
    }
    assert cli(keys_file, "disable", "gone").returncode == 0
    providers = write_providers(tmp / "providers.toml", upstream.url)
    text = providers.read_text()
    for name, env in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "GEMINI_API_KEY")):
        text = text.replace(f"[providers.{name}]\n", f'[providers.{name}]\napi_key_env = "{env}"\n')
    providers.write_text(text)
    proxy = Proxy(
        ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
         "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}", "--set", f"llm_keys={keys_file}",
         "--set", "llm_budget_refresh=1"],
        confdir=tmp / "conf", env=REAL_KEYS,
    ).start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy, keys_file, secrets
    proxy.stop()


def sent_with(upstream: FakeUpstream, marker: str) -> list[dict[str, str]]:
    """Headers of the upstream requests whose scenario carries `marker`."""
    return [r.headers for r in upstream.requests if marker in r.headers.get("x-fake-scenario", "")]


def test_upstream_sees_the_real_key_never_the_virtual_one(keyed, upstream: FakeUpstream, rows: Rows) -> None:
    proxy, _, secrets = keyed
    chat(proxy, secrets["alice"], id="real-openai")
    anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key=secrets["alice"], max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
        extra_headers=scenario(id="real-anthropic"),
    )
    with httpx.Client(base_url=proxy.url) as http:  # Gemini's query-parameter form
        http.post(f"/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={secrets['alice']}",
                  json={"contents": []}, headers=scenario(id="real-gemini"))
    [openai_headers] = sent_with(upstream, "real-openai")
    [anthropic_headers] = sent_with(upstream, "real-anthropic")
    [gemini_request] = [r for r in upstream.requests if "real-gemini" in r.headers.get("x-fake-scenario", "")]
    assert openai_headers["authorization"] == "Bearer sk-real-openai-0d9e"
    assert anthropic_headers["x-api-key"] == "sk-ant-real-77aa" and "authorization" not in anthropic_headers
    assert gemini_request.headers["x-goog-api-key"] == "AIza-real-gemini-5c1f" and "key" not in gemini_request.query
    everything_sent = json.dumps([(r.headers, r.query, r.body.decode(errors="replace")) for r in upstream.requests])
    for secret in secrets.values():
        assert secret not in everything_sent
    assert len(rows.wait_for("key_id = %s", ("alice",), 3)) == 3  # rows carry the key's name


def test_refusals_raise_the_matching_sdk_exception(keyed, rows: Rows) -> None:
    proxy, _, secrets = keyed
    with pytest.raises(openai.AuthenticationError):
        chat(proxy, "llmp-not-a-key")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key="llmp-wrong", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    # Keep the client referenced: google-genai closes its HTTP client when the Client is collected.
    gemini = genai.Client(api_key="llmp-wrong", http_options=genai_types.HttpOptions(base_url=f"{proxy.url}/gemini"))
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert gemini_error.value.code == 401 and gemini_error.value.status == "UNAUTHENTICATED"
    no_key = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError, match="disabled"):
        chat(proxy, secrets["gone"])
    with pytest.raises(openai.PermissionDeniedError, match="expired"):
        chat(proxy, secrets["old"])
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'gpt-4o'"):
        chat(proxy, secrets["mini"], model="gpt-4o")
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key=secrets["mini"], max_retries=0
                            ).messages.create(model="claude-sonnet-4-6", max_tokens=5,
                                              messages=[{"role": "user", "content": "hi"}])
    assert chat(proxy, secrets["mini"]).usage.prompt_tokens == 11  # its allowed model works
    [refused] = rows.wait_for("key_id = %s AND status = 403", ("gone",))
    assert refused["error"].startswith("llm-proxy answered HTTP 403")
    assert refused["cost_usd"] == 0 and refused["upstream_url"] is None


def test_rpm_under_concurrent_load_counts_429s_exactly(keyed) -> None:
    proxy, _, secrets = keyed

    def call(_: int) -> httpx.Headers | None:
        """None when the call went through, else the 429's headers."""
        try:
            chat(proxy, secrets["rpm"])
            return None
        except openai.RateLimitError as e:
            return e.response.headers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(25)))
    refused = [r for r in results if r is not None]
    assert len(refused) == 15 and results.count(None) == 10
    headers = refused[0]
    assert headers["x-ratelimit-limit-requests"] == "10" and headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60


def test_tpm_counts_real_usage(keyed) -> None:
    proxy, _, secrets = keyed
    chat(proxy, secrets["tpm"], input=90, output=30)  # 120 tokens: over the 100 tpm for the next minute
    with pytest.raises(openai.RateLimitError, match="tokens per minute") as refused:
        chat(proxy, secrets["tpm"])
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "100"


def test_parallel_limit_under_concurrent_load(keyed) -> None:
    proxy, _, secrets = keyed

    def call(_: int) -> str:
        try:
            chat(proxy, secrets["par"], first_delay=1.0)
            return "ok"
        except openai.RateLimitError:
            return "429"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert results.count("ok") == 2 and results.count("429") == 4


def test_budget_holds_and_survives_a_restart(keyed, start_proxy: ProxyFactory, pg_url: str, pg_table: str,
                                            upstream: FakeUpstream, tmp_path: Path) -> None:
    proxy, keys_file, secrets = keyed
    # Each call costs (1204 * 0.15 + 312 * 0.60) / 1e6 = $0.0003678; the budget is $0.001.
    for _ in range(3):
        chat(proxy, secrets["budget"], input=1204, output=312)
    with pytest.raises(openai.RateLimitError, match=r"has spent \$0.0011034 of its \$0.001 1d budget") as e:
        chat(proxy, secrets["budget"])
    assert e.value.code == "insufficient_quota"
    # A second proxy on the same database knows the spend from its first moment.
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    second = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                          "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}",
                          "--set", f"llm_keys={keys_file}"])
    with pytest.raises(openai.RateLimitError, match="budget"):
        chat(second, secrets["budget"])


def test_budget_is_shared_across_proxies(keyed, start_proxy: ProxyFactory, pg_url: str, tmp_path: Path,
                                         upstream: FakeUpstream) -> None:
    """Two proxies, one table: spend through one stops the key on the other within the refresh interval."""
    _, keys_file, _ = keyed
    table = "llmp_test_shared_" + os.urandom(4).hex()
    secret = create(keys_file, "shared-" + os.urandom(3).hex(), "--budget", "0.0005")
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    args = ["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
            "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}", "--set", f"llm_keys={keys_file}",
            "--set", "llm_budget_refresh=1"]
    try:
        first, second = start_proxy(args), start_proxy(args)
        chat(first, secret, input=1204, output=312)
        chat(first, secret, input=1204, output=312)  # $0.0007356 > $0.0005, all through `first`
        deadline = time.monotonic() + 5
        while True:
            try:
                chat(second, secret, input=1, output=1)
            except openai.RateLimitError:
                break
            assert time.monotonic() < deadline, "the second proxy never saw the first one's spend"
            time.sleep(0.2)
    finally:
        drop_table(pg_url, table)


def test_reload_picks_up_a_disabled_key_within_a_second(keyed) -> None:
    proxy, keys_file, secrets = keyed
    assert chat(proxy, secrets["reload"]).usage.prompt_tokens == 11
    assert cli(keys_file, "disable", "reload").returncode == 0
    disabled_at = time.monotonic()
    while True:
        try:
            chat(proxy, secrets["reload"])
        except openai.PermissionDeniedError:
            break
        assert time.monotonic() - disabled_at < 1.0, "still accepted a second after `keys disable`"
        time.sleep(0.05)
    assert cli(keys_file, "enable", "reload").returncode == 0
    deadline = time.monotonic() + 1.0
    while True:
        try:
            assert chat(proxy, secrets["reload"]).usage.prompt_tokens == 11
            break
        except openai.PermissionDeniedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_rotate_replaces_the_secret_live(keyed) -> None:
    proxy, keys_file, _ = keyed
    old = create(keys_file, "rotating")
    assert _wait_accepted(proxy, old)
    rotated = cli(keys_file, "rotate", "rotating")
    new = rotated.stdout.strip()
    assert rotated.returncode == 0 and new.startswith("llmp-") and new != old
    assert _wait_accepted(proxy, new)
    with pytest.raises(openai.AuthenticationError):
        chat(proxy, old)


def _wait_accepted(proxy: Proxy, secret: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chat(proxy, secret)
            return True
        except openai.AuthenticationError:
            time.sleep(0.05)
    return False


def test_no_secret_in_rows_or_logs(keyed, pg_url: str, pg_table: str) -> None:
    proxy, _, secrets = keyed
    chat(proxy, secrets["alice"])
    with psycopg.connect(pg_url) as conn:
        dump = json.dumps(conn.execute(f"SELECT * FROM {pg_table}").fetchall(), default=str)
    for secret in [*secrets.values(), *REAL_KEYS.values()]:
        assert secret not in dump and secret not in proxy.log


def test_global_queue_waits_fairly_then_refuses(
    tmp_path: Path, upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db=sqlite:///{tmp_path / 'rows.db'}", "--set", "llm_max_concurrent=2",
                         "--set", "llm_queue_timeout=1", "--set", "llm_queue_max=2"])

    def call(first_delay: float) -> str:
        try:
            chat(proxy, "sk-passthrough", first_delay=first_delay)
            return "ok"
        except openai.RateLimitError:
            return "429"
        except openai.InternalServerError as e:
            return str(e.status_code)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # 2 run for 2.5 s, 2 wait (and time out after 1 s), 2 find the queue full.
        slow = [pool.submit(call, 2.5) for _ in range(2)]
        time.sleep(0.3)
        waiting = [pool.submit(call, 0) for _ in range(2)]
        time.sleep(0.3)
        overflow = [pool.submit(call, 0) for _ in range(2)]
        results = [f.result() for f in slow + waiting + overflow]
    assert results == ["ok", "ok", "429", "429", "503", "503"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # short calls queue and all get through
        quick = list(pool.map(lambda _: call(0.2), range(4)))
    assert quick == ["ok"] * 4
