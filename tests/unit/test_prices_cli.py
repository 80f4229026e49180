"""`llm-proxy prices show` and `llm-proxy prices check`, on an SQLite file of rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from llm_proxy.cli import main
from llm_proxy.record import Record
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink

DAY = datetime.now(UTC) - timedelta(days=1)


def write_rows(path, *records: Record) -> str:
    sink = SqliteSink(str(path), "llm_requests")
    sink.connect()
    sink.write([row_values(r, body_max_bytes=None) for r in records])
    sink.close()
    return f"sqlite:///{path}"


def call(request_id: str, provider: str, model: str, response_model: str | None = None, **fields) -> Record:
    values = dict(ts=DAY, api="openai-chat", input_tokens=10, output_tokens=1, total_tokens=11,
                  cost_usd=Decimal("0.001"))
    return Record(request_id=request_id, provider=provider, model=model, response_model=response_model,
                  **{**values, **fields})


def test_show_a_database_model(capsys):
    assert main(["prices", "show", "gpt-5.6-luna", "--provider", "openai", "--at", "2026-11-01T12:00",
                 "--tier", "flex"]) == 0
    out = capsys.readouterr().out
    assert "genai-prices model 'gpt-5.6-luna' of provider 'openai'" in out
    assert "equals 'gpt-5.6-luna'" in out
    assert "input: 0.1 (0.2 above 272000 input tokens) USD per 1M tokens" in out
    assert "tiers it prices (--tier): batch, default, fast, flex, priority" in out


def test_show_a_pricing_toml_model_and_the_provider_found_for_it(capsys):
    assert main(["prices", "show", "glm-4.7-flash"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("zai glm-4.7-flash\n")
    assert 'pricing.toml [zai] exact key "glm-4.7-flash"' in out
    assert "ollama" not in out  # Ollama's catch-all "" prices any name: not shown unless asked


def test_show_a_sibling_passed_over(tmp_path, capsys):
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[openai]\n"gpt-5.5" = { input = 5, output = 30 }\n')
    assert main(["prices", "show", "gpt-5.5-cyber", "--provider", "openai", "--pricing", str(pricing)]) == 0
    out = capsys.readouterr().out
    assert "pricing.toml's prefix \"gpt-5.5\" is not used" in out and "input: 12.5" in out


def test_show_a_tier_the_database_lacks(capsys):
    assert main(["prices", "show", "gpt-5.6-luna", "--provider", "openai", "--tier", "scale"]) == 0
    assert "service tier 'scale' has no price" in capsys.readouterr().out


def test_show_an_unpriced_model_exits_1(capsys):
    assert main(["prices", "show", "no-such-model", "--provider", "openai"]) == 1
    assert "'no-such-model' has no price for provider openai" in capsys.readouterr().err


def test_check_passes_when_every_model_is_priced_by_name(tmp_path, capsys):
    url = write_rows(tmp_path / "calls.db",
                     call("a", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
                     call("b", "zai", "glm-4.7-flash"),
                     call("c", "ollama", "llama3.1:8b"),
                     call("d", "openai", "unpriced-but-no-usage", input_tokens=None, output_tokens=None),
                     call("e", "openai", "too-old-to-matter", ts=DAY - timedelta(days=40)))
    assert main(["prices", "check", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "3 with usage, 3 models" in out and "every model seen is priced" in out


def test_check_fails_on_unpriced_prefixed_and_differing(tmp_path, capsys):
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[groq]\n"llama-3.1-8b-instant" = { input = 0.05, output = 0.08 }\n'
                       '[openai]\n"gpt-5.6-luna" = { input = 1.0, cached_input = 0.1, output = 6.0 }\n'
                       '[together]\n"deepseek-ai/DeepSeek-R1" = { input = 3.0, output = 7.0 }\n')
    url = write_rows(tmp_path / "calls.db",
                     call("a", "openai", "made-up-model"),
                     call("b", "together", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"),
                     call("c", "together", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"))
    assert main(["prices", "check", "--since", "7d", "--db", url, "--pricing", str(pricing)]) == 1
    out = capsys.readouterr().out
    assert "openai/made-up-model: 1 rows" in out
    assert 'together/deepseek-ai/DeepSeek-R1-Distill-Llama-70B: 2 rows, by "deepseek-ai/DeepSeek-R1" in [together]' \
        in out
    assert '[openai] "gpt-5.6-luna": input 1 here, 0.2 in genai-prices' in out
    assert "cache_write unpriced here, 0.25 in genai-prices" in out
    assert "long-context tiers none here, [272000] in genai-prices" in out
    # An entry equal to the database is reported as removable, not as a failure.
    assert 'equal to genai-prices (can be removed):\n  [groq] "llama-3.1-8b-instant"' in out


def test_the_shipped_pricing_toml_has_no_difference_with_the_database(tmp_path, capsys):
    url = write_rows(tmp_path / "calls.db", call("a", "openai", "gpt-4o-mini"))
    assert main(["prices", "check", "--db", url]) == 0


def test_a_since_that_is_no_span_is_a_clear_error(tmp_path, capsys):
    assert main(["prices", "check", "--since", "soon", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    assert "--since 'soon': use a span like 30d" in capsys.readouterr().err


def test_a_missing_database_is_one_sentence_and_is_not_created(tmp_path, capsys):
    path = tmp_path / "typo.db"
    assert main(["prices", "check", "--db", f"sqlite:///{path}"]) == 1
    assert "cannot read table llm_requests of sqlite file" in capsys.readouterr().err
    assert not path.exists()
