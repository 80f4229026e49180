"""pricing.toml: longest-prefix lookup, the one Decimal cost formula, and validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llm_proxy.config.pricing import Price, PriceBook, cost, load_pricing, missing_rate, unknown_count
from llm_proxy.config.providers import ConfigError
from llm_proxy.paths import DEFAULT_PRICING
from llm_proxy.usage import Usage

PRICES = """
[openai]
"gpt-4o" = { input = 2.5, cached_input = 1.25, output = 10 }
"gpt-4o-mini" = { input = 0.15, cached_input = 0.075, output = 0.60 }
"gpt-5.6" = { input = 5.0, cached_input = 0.5, cache_write = 6.25, output = 30.0 }
"text-embedding-3-small" = { input = 0.02, output = 0 }
"o1-pro" = { input = 150.0, output = 600.0 }

[anthropic]
"claude-sonnet-4" = { input = 3.0, cached_input = 0.30, cache_write = 3.75, cache_write_1h = 6.0, output = 15.0, web_search = 0.01 }
"claude-sonnet-4-5" = { input = 3.5, cached_input = 0.35, cache_write = 4.375, cache_write_1h = 7.0, output = 17.5 }
"claude-sonnet-4-5-20250929" = { input = 4.0, output = 20.0 }

[gemini]
"gemini-2.5-pro" = { input = 1.25, cached_input = 0.125, output = 10.0, above_tokens = 200000, above = { input = 2.5, cached_input = 0.25, output = 15.0 } }

[ollama]
"" = { input = 0.0, output = 0.0 }

["*"]
"llama-3.1" = { input = 0.05, output = 0.08 }
"gpt-4o" = { input = 99, output = 99 }
"""


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> PriceBook:
    path = tmp_path_factory.mktemp("pricing") / "pricing.toml"
    path.write_text(PRICES)
    return load_pricing(path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    return path


# --- lookup ------------------------------------------------------------------------------

@pytest.mark.parametrize("model,input_price", [
    ("claude-sonnet-4-20250514", Decimal("3.0")),
    ("claude-sonnet-4", Decimal("3.0")),
    ("claude-sonnet-4-5", Decimal("3.5")),
    ("claude-sonnet-4-5-20991231", Decimal("3.5")),
    ("claude-sonnet-4-5-20250929", Decimal("4.0")),
])
def test_longest_prefix_wins(book, model, input_price):
    assert book.find("anthropic", model).input == input_price


def test_mini_is_not_priced_as_its_prefix(book):
    assert book.find("openai", "gpt-4o-mini-2024-07-18").output == Decimal("0.60")
    assert book.find("openai", "gpt-4o-2024-08-06").output == Decimal(10)


def test_star_table_is_the_fallback_for_any_provider(book):
    assert book.find("groq", "llama-3.1-8b-instant") == Price(input=Decimal("0.05"), output=Decimal("0.08"))
    assert book.find("openai", "llama-3.1-70b").input == Decimal("0.05")
    # The provider's own table wins over "*".
    assert book.find("openai", "gpt-4o").input == Decimal("2.5")
    assert book.find("openrouter", "gpt-4o").input == Decimal(99)


@pytest.mark.parametrize("provider,model", [("openai", "davinci-002"), ("mistral", "mistral-large"),
                                            ("openai", None), ("openai", "")])
def test_unknown_model_has_no_price(book, provider, model):
    assert book.find(provider, model) is None


def test_empty_key_prices_every_model(book):
    assert book.find("ollama", "llama3.1:8b") == Price(input=Decimal("0.0"), output=Decimal("0.0"))
    assert len(book) == 12


# --- the cost formula --------------------------------------------------------------------

def test_openai_cached_and_cache_write_and_reasoning_not_double_counted(book):
    # 10000 prompt (6000 cached, 1000 written), 2000 completion of which 1500 reasoning.
    usage = Usage(input_tokens=10000, output_tokens=2000, cached_tokens=6000, cache_write_tokens=1000,
                  reasoning_tokens=1500)
    # (3000*5 + 6000*0.5 + 1000*6.25 + 2000*30) / 1e6 = (15000 + 3000 + 6250 + 60000) / 1e6
    assert cost(book.find("openai", "gpt-5.6-2026-07-01"), usage) == Decimal("0.08425")


def test_openai_gpt_4o_mini(book):
    usage = Usage(input_tokens=1204, output_tokens=312, cached_tokens=1024, cache_write_tokens=0, reasoning_tokens=0)
    # (180*0.15 + 1024*0.075 + 312*0.60) / 1e6 = (27 + 76.8 + 187.2) / 1e6
    assert cost(book.find("openai", "gpt-4o-mini"), usage) == Decimal("0.000291")


def test_anthropic_5m_1h_reads_and_web_search(book):
    # raw input 50, reads 10000, writes 2000 (500 of them 1h), output 400, 2 searches
    usage = Usage(input_tokens=12050, output_tokens=400, cached_tokens=10000, cache_write_tokens=2000,
                  cache_write_1h_tokens=500, reasoning_tokens=120, web_search_requests=2)
    # (50*3 + 10000*0.3 + 1500*3.75 + 500*6 + 400*15) / 1e6 + 2*0.01
    # = (150 + 3000 + 5625 + 3000 + 6000) / 1e6 + 0.02 = 0.017775 + 0.02
    assert cost(book.find("anthropic", "claude-sonnet-4-20250514"), usage) == Decimal("0.037775")


def test_gemini_thoughts_cached_and_tool_prompt(book):
    usage = Usage(input_tokens=1240, output_tokens=800, cached_tokens=1000, reasoning_tokens=500)
    # ((1240-1000)*1.25 + 1000*0.125 + 800*10) / 1e6 = (300 + 125 + 8000) / 1e6
    assert cost(book.find("gemini", "gemini-2.5-pro"), usage) == Decimal("0.008425")


@pytest.mark.parametrize("prompt,cached,expected", [
    # at the threshold: base rates: (200000*1.25 + 1000*10) / 1e6
    (200000, 0, Decimal("0.26")),
    # above: the whole request at the above rates: (250000*2.5 + 1000*15) / 1e6
    (250000, 0, Decimal("0.64")),
    # above with cache reads: (150000*2.5 + 100000*0.25 + 1000*15) / 1e6 = (375000 + 25000 + 15000) / 1e6
    (250000, 100000, Decimal("0.415")),
])
def test_gemini_above_tokens_tier(book, prompt, cached, expected):
    usage = Usage(input_tokens=prompt, output_tokens=1000, cached_tokens=cached)
    assert cost(book.find("gemini", "gemini-2.5-pro-preview-06-05"), usage) == expected


def test_embeddings(book):
    usage = Usage(input_tokens=8, output_tokens=0)
    assert cost(book.find("openai", "text-embedding-3-small"), usage) == Decimal("0.00000016")


def test_ollama_zero_price_is_decimal_zero(book):
    amount = cost(book.find("ollama", "llama3.1:8b"), Usage(input_tokens=26, output_tokens=290))
    assert amount == Decimal(0)
    assert isinstance(amount, Decimal)


def test_missing_cached_price_with_cached_tokens_is_unknown(book):
    price = book.find("openai", "o1-pro")
    usage = Usage(input_tokens=5000, output_tokens=10, cached_tokens=1024)
    assert cost(price, usage) is None
    assert missing_rate(price, usage) == "1024 cached_input tokens but no cached_input price"
    # zero cached tokens need no cached price: (5000*150 + 10*600) / 1e6
    assert cost(price, Usage(input_tokens=5000, output_tokens=10, cached_tokens=0)) == Decimal("0.756")
    assert missing_rate(price, Usage(input_tokens=5000, output_tokens=10, cached_tokens=0)) is None


def test_missing_web_search_and_1h_prices(book):
    price = book.find("anthropic", "claude-sonnet-4-5")
    searches = Usage(input_tokens=10, output_tokens=10, web_search_requests=1)
    assert cost(price, searches) is None
    assert missing_rate(price, searches) == "1 web_search tokens but no web_search price"
    dated = book.find("anthropic", "claude-sonnet-4-5-20250929")
    writes_1h = Usage(input_tokens=100, output_tokens=1, cache_write_tokens=50, cache_write_1h_tokens=50)
    assert cost(dated, writes_1h) is None


def test_unknown_usage_is_unknown_cost(book):
    assert cost(book.find("openai", "gpt-4o"), Usage()) is None
    assert cost(book.find("openai", "gpt-4o"), Usage(cached_tokens=5)) is None


@pytest.mark.parametrize("usage", [Usage(output_tokens=100), Usage(input_tokens=100),
                                   Usage(output_tokens=100, cached_tokens=0)])
def test_a_cost_built_on_an_unknown_input_or_output_count_is_unknown(book, usage):
    # Issue 8: `"prompt_tokens": "abc"` left input unknown but still gave a cost (input taken as 0).
    assert cost(book.find("openai", "gpt-4o"), usage) is None


def test_cache_fields_a_provider_never_reports_are_zero_not_unknown(book):
    # Ollama's and Groq's usage has no cache fields at all: still priced. (1000*2.5 + 100*10) / 1e6
    assert cost(book.find("openai", "gpt-4o"), Usage(input_tokens=1000, output_tokens=100)) == Decimal("0.0035")


def marked(invalid: frozenset[str], **counts: int) -> Usage:
    """A Usage as usage/model.py marks one whose provider sent a non-count (attribute `invalid`)."""
    return type("MarkedUsage", (Usage,), {"invalid": invalid})(**counts)


def test_a_cache_count_the_provider_garbled_makes_the_cost_unknown(book):
    # OpenAI `"prompt_tokens_details": {"cached_tokens": "abc"}`: cached is None, but not as "not reported".
    usage = marked(frozenset({"cached_tokens"}), input_tokens=1000, output_tokens=100)
    assert cost(book.find("openai", "gpt-4o"), usage) is None
    assert unknown_count(usage) == "a count the provider sent is not a count"
    # A garbled reasoning count does not matter here: output is billed whole.
    usage = marked(frozenset({"reasoning_tokens"}), input_tokens=1000, output_tokens=100)
    assert cost(book.find("openai", "gpt-4o"), usage) == Decimal("0.0035")


@pytest.mark.parametrize("field,value", [("cached_tokens", 5000), ("cache_write_tokens", 5000),
                                         ("cache_write_1h_tokens", 800), ("cached_tokens", -5),
                                         ("input_tokens", -5), ("web_search_requests", -1)])
def test_never_a_negative_cost(book, field, value):
    # Issue 8: cached_tokens > prompt_tokens gave a negative cost. Usage now refuses such counts
    # when parsed, but a stored row from before (`db reprice`) can still hold them.
    usage = Usage(input_tokens=1000, output_tokens=10, cache_write_tokens=500)
    setattr(usage, field, value)  # after __post_init__: as read back from an old row
    assert cost(book.find("anthropic", "claude-sonnet-4"), usage) is None


# --- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ('[openai]\n"gpt-4o" = { output = 10.0 }\n', 'input is required'),
    ('[openai]\n"gpt-4o" = { input = 1.0 }\n', 'output is required'),
    ('[openai]\n"gpt-4o" = { input = -1.0, output = 10.0 }\n', '"gpt-4o".input cannot be negative'),
    ('[openai]\n"gpt-4o" = { input = 1.0, output = 10.0, inptu = 2 }\n', "unknown field(s) ['inptu']"),
    ('[openai]\n"gpt-4o" = { input = "2.5", output = 10.0 }\n', "input must be a number (USD), not '2.5'"),
    ('[openai]\n"gpt-4o" = { input = true, output = 10.0 }\n', "input must be a number (USD), not True"),
    ('[openai]\n"gpt-4o" = 2.5\n', "must be an inline table"),
    ('openai = 3\n', "[openai] must be a table of models"),
    ('[openai\n"gpt-4o" = { input = 1 }\n', "is not valid TOML"),
    ('[gemini]\n"g" = { input = 1, output = 2, above = { input = 2 } }\n',
     "above_tokens must be a positive integer when above is given"),
    ('[gemini]\n"g" = { input = 1, output = 2, above_tokens = 1.5, above = { input = 2 } }\n',
     "above_tokens must be a positive integer"),
    ('[gemini]\n"g" = { input = 1, output = 2, above_tokens = 0, above = { input = 2 } }\n',
     "above_tokens must be a positive integer"),
    ('[gemini]\n"g" = { input = 1, output = 2, above_tokens = 10, above = { input = 2, above_tokens = 5 } }\n',
     "unknown field(s) ['above_tokens']"),
    ('[gemini]\n"g" = { input = 1, output = 2, above_tokens = 10, above = { input = -2 } }\n',
     '"g".above.input cannot be negative'),
])
def test_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_pricing(write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "pricing.toml") in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read pricing file .*nope.toml"):
        load_pricing(tmp_path / "nope.toml")


def test_above_inherits_unlisted_rates(tmp_path):
    book = load_pricing(write(tmp_path, '[x]\n"m" = { input = 1, cached_input = 0.1, output = 2, web_search = 0.01, '
                                        'above_tokens = 100, above = { input = 3 } }\n'))
    price = book.find("x", "m")
    assert price.above_tokens == 100
    assert price.above == Price(input=Decimal(3), output=Decimal(2), cached_input=Decimal("0.1"),
                                web_search=Decimal("0.01"))


def test_above_that_is_not_a_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="above"):
        load_pricing(write(tmp_path, '[x]\n"m" = { input = 1, output = 2, above_tokens = 100, above = 5 }\n'))


@pytest.mark.parametrize("value", ["nan", "inf", "+inf"])
def test_non_finite_price_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match="input"):
        load_pricing(write(tmp_path, f'[x]\n"m" = {{ input = {value}, output = 2 }}\n'))


def test_prices_are_decimal_never_float(tmp_path):
    book = load_pricing(write(tmp_path, '[x]\n"m" = { input = 0.1, output = 0.2 }\n'))
    price = book.find("x", "m")
    assert price.input == Decimal("0.1") and type(price.input) is Decimal
    # 0.1 + 0.2 would be 0.30000000000000004 in float
    assert cost(price, Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == Decimal("0.3")


# --- the shipped pricing.toml ------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> PriceBook:
    return load_pricing(DEFAULT_PRICING)


def test_shipped_file_holds_only_what_the_database_lacks(shipped):
    from llm_proxy.prices.database import PriceDatabase

    database = PriceDatabase()
    known = [(e.table, e.key) for e in shipped.entries() if database.find(e.table, e.key) is not None]
    assert known == []  # genai-prices prices these now: delete them from pricing.toml
    assert len(shipped) >= 20


def test_every_shipped_entry_says_why():
    entries = [line for line in DEFAULT_PRICING.read_text().splitlines() if line.startswith('"')]
    assert entries and all("#" in line for line in entries)


def test_shipped_free_glm_with_cached_tokens_costs_zero_not_null(shipped):
    # Issue 14: glm-4.7-flash (free) got NULL instead of 0 when it reported cached tokens.
    usage = Usage(input_tokens=1000, output_tokens=50, cached_tokens=600)
    assert cost(shipped.find("zai", "glm-4.7-flash"), usage) == Decimal(0)


def test_shipped_ollama_is_free(shipped):
    assert cost(shipped.find("ollama", "qwen3:4b"), Usage(input_tokens=5, output_tokens=5, cached_tokens=0)) == 0
