"""Prices end to end: a real mitmdump prices rows from pricing.toml over genai-prices; the CLI checks and reprices them.

The operator's pricing.toml here holds a stale exact entry (gpt-5.6-luna at
its old 1/6) and a prefix that would price a sibling (gpt-5.5 for
gpt-5.5-cyber). Expected costs are worked out from genai-prices 0.2.3's data.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.e2e.conftest import (BIN, REPO, Proxy, Rows, anthropic_client, new_key, openai_client, scenario,
                                write_providers)
from tests.fakes.upstream import FakeUpstream

OPERATOR_PRICING = """
[openai]
"gpt-5.6-luna" = { input = 1.0, cached_input = 0.1, output = 6.0 }  # exact: wins over the database
"gpt-5.5" = { input = 5.0, cached_input = 0.5, output = 30.0 }        # prefix: not for gpt-5.5-cyber

[ollama]
"" = { input = 0, output = 0 }
"""
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def pricing(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pricing") / "pricing.toml"
    path.write_text(OPERATOR_PRICING)
    return str(path)


@pytest.fixture(scope="module")
def priced_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str,
                 pricing: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("proxy")
    providers = write_providers(tmp / "providers.toml", upstream.url)
    p = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
               "--set", f"llm_pricing={pricing}", "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}"],
              confdir=tmp / "conf").start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p
    p.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "llm-proxy"), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_rows_priced_by_pricing_toml_then_genai_prices_then_repriced(
        priced_proxy: Proxy, rows: Rows, key: str, pg_url: str, pg_table: str, pricing: str) -> None:
    client = openai_client(priced_proxy, key)
    usage = scenario(input=10000, output=1000)
    client.chat.completions.create(model="gpt-5.6-luna", messages=MESSAGES, extra_headers=usage)
    for _ in range(2):
        client.chat.completions.create(model="gpt-5.5-cyber", messages=MESSAGES, extra_headers=usage)
    anthropic_client(priced_proxy, key).messages.create(
        model="claude-sonnet-5-5", max_tokens=50, messages=MESSAGES,
        extra_headers=scenario(input=12050, cached=10000, cache_write=2000, cache_write_1h=500, output=400))
    found = {r["model"]: r["cost_usd"] for r in rows.wait(key, 4)}
    # The operator's exact entry: (10000*1 + 1000*6) / 1e6
    assert found["gpt-5.6-luna"] == Decimal("0.016")
    # The database, not the operator's "gpt-5.5" prefix: (10000*12.5 + 1000*75) / 1e6
    assert found["gpt-5.5-cyber"] == Decimal("0.2")
    # The database, Anthropic's cache classes: (50*2 + 10000*0.1 + 1500*2.5 + 500*4 + 400*10) / 1e6
    assert found["claude-sonnet-5-5"] == Decimal("0.01085")
    assert priced_proxy.log.count("gpt-5.5-cyber: genai-prices knows it as 'gpt-5.5-cyber'") == 1

    # `prices check` with the operator's file: its stale entry differs from the database.
    checked = cli("prices", "check", "--since", "1d", "--db", pg_url, "--table", pg_table, "--pricing", pricing)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert '[openai] "gpt-5.6-luna": input 1 here, 0.2 in genai-prices' in checked.stdout

    # The operator deletes the stale entry (the shipped file has none) and reprices: (10000*0.2 + 1000*1.2) / 1e6
    repriced = cli("db", "reprice", "--since", "1d", "--model", "gpt-5.6-luna", "--db", pg_url, "--table", pg_table)
    assert repriced.returncode == 0, repriced.stderr
    assert "before 0.016 USD, after 0.0032 USD" in repriced.stdout
    found = {r["model"]: r["cost_usd"] for r in rows.wait(key, 4)}
    assert found["gpt-5.6-luna"] == Decimal("0.0032") and found["gpt-5.5-cyber"] == Decimal("0.2")


def test_a_model_nobody_prices_is_null_and_named_by_check(
        priced_proxy: Proxy, rows: Rows, pg_url: str, pg_table: str, pricing: str) -> None:
    key = new_key()
    openai_client(priced_proxy, key).chat.completions.create(
        model="no-such-model-e2e", messages=MESSAGES, extra_headers=scenario(input=5, output=5))
    assert rows.wait(key)[0]["cost_usd"] is None
    checked = cli("prices", "check", "--since", "1d", "--db", pg_url, "--table", pg_table, "--pricing", pricing)
    assert checked.returncode == 1 and "openai/no-such-model-e2e: 1 rows" in checked.stdout
