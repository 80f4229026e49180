"""`llm-proxy db reprice`: stored rows get exactly the cost the proxy would give them now, in batches.

Run on the embedded SQLite database and on PostgreSQL (LLM_PROXY_TEST_PG).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from llm_proxy.cli import main
from llm_proxy.config.pricing import load_pricing
from llm_proxy.paths import DEFAULT_PRICING
from llm_proxy.pricer import Pricer
from llm_proxy.prices import rows as stored
from llm_proxy.record import Record
from llm_proxy.storage.postgres import PostgresSink
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink
from llm_proxy.usage import Usage

PG = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# Yesterday at noon UTC: inside --since 30d, and off-peak for DeepSeek.
DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
OLD = DAY - timedelta(days=60)

ANTHROPIC_BODY = {
    "id": "msg_1", "type": "message", "model": "claude-sonnet-5-5", "content": [],
    "usage": {"input_tokens": 50, "cache_read_input_tokens": 10000, "cache_creation_input_tokens": 2000,
              "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
              "output_tokens": 400, "server_tool_use": {"web_search_requests": 2}, "service_tier": "standard"},
}
OPENAI_FLEX_BODY = {"id": "c1", "model": "gpt-5.6-luna", "service_tier": "flex",
                    "usage": {"prompt_tokens": 10000, "completion_tokens": 1000, "total_tokens": 11000}}


def row(request_id: str, **fields) -> Record:
    base = dict(ts=DAY, provider="openai", api="openai-chat", model="gpt-5.6-luna", key_id="team")
    return Record(request_id=request_id, **{**base, **fields})


def rows() -> list[Record]:
    return [
        # priced at gpt-5.6-luna's old 1/6: (10000*1 + 1000*6) / 1e6; now (10000*0.2 + 1000*1.2) / 1e6 = 0.0032
        row("luna", input_tokens=10000, output_tokens=1000, total_tokens=11000, cached_tokens=0,
            cost_usd=Decimal("0.016")),
        # DeepSeek's current name had no price: NULL; now (10000*0.15 + 1000*0.6) / 1e6 = 0.0021
        row("deepseek", provider="deepseek", model="deepseek-flash", input_tokens=10000, output_tokens=1000,
            total_tokens=11000, cached_tokens=0, cost_usd=None),
        # 1-hour writes and web searches are not columns: read back from the stored body.
        # (50*2 + 10000*0.1 + 1500*2.5 + 500*4 + 400*10) / 1e6 + 2*10/1000 = 0.03085
        row("claude", provider="anthropic", api="anthropic-messages", model="claude-sonnet-5-5",
            response_model="claude-sonnet-5-5", input_tokens=12050, output_tokens=400, total_tokens=12450,
            cached_tokens=10000, cache_write_tokens=2000, cost_usd=Decimal("0.0156"),
            response_body=json.dumps(ANTHROPIC_BODY).encode()),
        # The tier is in the stored body: flex, (10000*0.1 + 1000*0.6) / 1e6 = 0.0016
        row("flex", input_tokens=10000, output_tokens=1000, total_tokens=11000, cost_usd=Decimal("0.0032"),
            response_body=json.dumps(OPENAI_FLEX_BODY).encode()),
        # A row stored before counts were checked (cached > input): NULL, never negative.
        row("garbled", input_tokens=100, output_tokens=10, total_tokens=110, cached_tokens=5000,
            cost_usd=Decimal("-0.0001")),
        # Left as they were: no usage (a local answer's 0), relayed with two billed attempts.
        row("local", status=401, cost_usd=Decimal(0)),
        row("relayed", input_tokens=10000, output_tokens=1000, total_tokens=11000, cost_usd=Decimal("0.5"),
            attempts=[{"provider": "openai", "model": "gpt-5.6-luna", "status": 200, "input_tokens": 10,
                       "output_tokens": 1, "cost_usd": "0.1"},
                      {"provider": "openai", "model": "gpt-5.6-luna", "status": 200, "input_tokens": 10000,
                       "output_tokens": 1000, "cost_usd": "0.4"}]),
        # Token counting is free.
        row("count", provider="anthropic", api="anthropic-count-tokens", model="claude-sonnet-5-5",
            input_tokens=20, cost_usd=Decimal("0.00006")),
        # Outside --since: untouched.
        row("old", ts=OLD, input_tokens=10000, output_tokens=1000, total_tokens=11000, cost_usd=Decimal("0.016")),
    ]


EXPECTED = {"luna": Decimal("0.0032"), "deepseek": Decimal("0.0021"), "claude": Decimal("0.03085"),
            "flex": Decimal("0.0016"), "garbled": None, "local": Decimal(0), "relayed": Decimal("0.5"),
            "count": Decimal(0), "old": Decimal("0.016")}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    table = f"reprice_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'calls.db'}"
        sink = SqliteSink(str(tmp_path / "calls.db"), table)
    else:
        url = PG
        sink = PostgresSink(PG, table)
    sink.connect()
    sink.write([row_values(r, body_max_bytes=None) for r in rows()])
    yield url, table, sink
    sink.close()
    if request.param == "postgresql":
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_bodies CASCADE")


def costs(url: str, table: str) -> dict[str, Decimal | None]:
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            found = conn.execute(f"SELECT request_id, cost_usd FROM {table}").fetchall()
        return {r: None if c is None else Decimal(c) for r, c in found}
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT request_id, cost_usd FROM {table}").fetchall())


def test_reprice_gives_each_row_its_exact_cost_at_todays_prices(db, capsys):
    url, table, sink = db
    assert main(["db", "reprice", "--since", "30d", "--db", url, "--table", table]) == 0
    assert costs(url, table) == EXPECTED
    out = capsys.readouterr().out
    # Totals over the rows priced again (luna, deepseek, claude, flex, garbled, count):
    # before 0.016 + 0.0156 + 0.0032 - 0.0001 + 0.00006 = 0.03476; after 0.0032 + 0.0021 + 0.03085 + 0.0016
    assert "priced again: 6, cost changed: 6" in out
    assert "before 0.03476 USD, after 0.03775 USD (change +0.00299 USD)" in out
    assert "unpriced (NULL) before 1, after 1" in out
    assert "no usage: 1" in out and "relayed with several billed attempts: 1" in out
    # Budgets read spend from the rows: the key's spend is the repriced sum.
    spend = sink.spend_since({"team": DAY - timedelta(hours=1)})["team"]
    assert spend == sum(c for r, c in EXPECTED.items() if c is not None and r != "old")


def test_dry_run_writes_nothing(db, capsys):
    url, table, _ = db
    before = costs(url, table)
    assert main(["db", "reprice", "--since", "30d", "--dry-run", "--db", url, "--table", table]) == 0
    assert costs(url, table) == before
    assert "dry run: nothing written" in capsys.readouterr().out


def test_one_model_only_and_small_batches(db, monkeypatch):
    url, table, _ = db
    monkeypatch.setattr(stored.RowStore.batches, "__defaults__", (2,))
    assert main(["db", "reprice", "--since", "30d", "--model", "claude-sonnet-5-5", "--db", url,
                 "--table", table]) == 0
    found = costs(url, table)
    assert found["claude"] == Decimal("0.03085") and found["count"] == 0
    assert found["luna"] == Decimal("0.016")  # another model: untouched


def test_reprice_equals_the_live_pricer():
    """The row as stored and priced again costs what the proxy gave the call when it was made."""
    pricer = Pricer(load_pricing(DEFAULT_PRICING))
    usage = Usage(input_tokens=12050, output_tokens=400, cached_tokens=10000, cache_write_tokens=2000,
                  cache_write_1h_tokens=500, web_search_requests=2)
    live = row("x", provider="anthropic", api="anthropic-messages", model="claude-sonnet-5-5")
    stored_row = stored.StoredRow(1, DAY, "anthropic", "anthropic-messages", "claude-sonnet-5-5", None, 12050, 400,
                                  10000, 2000, None, None, None, ANTHROPIC_BODY)
    assert stored.reprice(pricer.prices, stored_row) == pricer.call(live, usage) == Decimal("0.03085")


@pytest.mark.parametrize("text,delta", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                        ("2w", timedelta(weeks=2))])
def test_since_spans(text, delta):
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert stored.parse_since(text, now) == now - delta
    assert stored.parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)


def test_since_that_is_not_a_span_is_a_clear_error(capsys):
    assert main(["db", "reprice", "--since", "a month", "--db", "sqlite:///x.db"]) == 1
    assert "use a span like 30d" in capsys.readouterr().err
