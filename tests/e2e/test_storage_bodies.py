"""A coding agent's session through a real mitmdump into PostgreSQL: bodies kept small, read back exactly.

50 calls resending a growing conversation (~150 KB request bodies) must take at most
10% of their bodies' bytes on disk (rows' table with all partitions, indexes and
TOAST, plus the parts table), while the view and `/_llm/api/requests/<id>` give each
body back as the client sent it. Body retention runs in the proxy's worker thread.

Request bodies go out with httpx as raw bytes: an SDK would re-serialise them, and
the point is that the stored text is the text that arrived.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from bench.storage import agent_session, postgres_bytes, records
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink
from tests.fakes.upstream import FakeUpstream

from .conftest import Proxy, ProxyFactory, Rows, run_mitmdump_expecting_failure, scenario, write_providers

ADMIN_KEY = "adm-" + secrets.token_urlsafe(24)
CALLS = 50


@pytest.fixture(scope="module")
def agent_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str):
    tmp = tmp_path_factory.mktemp("agent")
    providers = write_providers(tmp / "providers.toml", upstream.url)
    proxy = Proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                   "--set", f"llm_db={pg_url}", "--set", f"llm_table={pg_table}",
                   "--set", f"llm_admin_key={ADMIN_KEY}"], confdir=tmp / "conf").start()
    proxy.wait_for_log("llm-proxy writing rows to")
    yield proxy
    proxy.stop()


def test_agent_session_is_stored_in_a_tenth_of_its_bytes_and_read_back_exactly(
    agent_proxy: Proxy, rows: Rows, pg_url: str, pg_table: str
) -> None:
    key = "sk-ant-" + secrets.token_hex(8)
    session = list(agent_session(CALLS))
    sent, answers = [], []
    with httpx.Client(base_url=agent_proxy.url, timeout=60) as client:
        for request, _ in session:
            reply = client.post("/anthropic/v1/messages", content=request,
                                headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                                         "content-type": "application/json", **scenario()})
            assert reply.status_code == 200, reply.text
            sent.append(request)
            answers.append(reply.content)
    stored = rows.wait(key, CALLS, timeout=60)
    end_to_end = sum(map(len, sent)) + sum(map(len, answers))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        texts = dict(conn.execute(f"SELECT request_id, request_body::text FROM {pg_table}_full "
                                  "WHERE request_id = ANY(%s)", ([r["request_id"] for r in stored],)).fetchall())
        assert [texts[r["request_id"]] for r in stored] == [b.decode() for b in sent]  # exact, byte for byte
        assert [r["response_body"] for r in stored] == [json.loads(a) for a in answers]
        conn.execute(f"VACUUM ANALYZE {pg_table}")
        conn.execute(f"VACUUM ANALYZE {pg_table}_bodies")
        table_bytes, parts_bytes = postgres_bytes(conn, pg_table)
        raw = conn.execute(f"SELECT request_body ->> 0 FROM {pg_table} WHERE request_id = %s",
                           (stored[-1]["request_id"],)).fetchone()[0]
    assert raw == "llm-body/1"  # the row itself holds a reference document
    assert table_bytes + parts_bytes <= 0.10 * end_to_end, (table_bytes, parts_bytes, end_to_end)
    # The control plane reads the same bodies back.
    last = stored[-1]["request_id"]
    one = httpx.get(f"{agent_proxy.url}/_llm/api/requests/{last}", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                    timeout=30)
    assert one.status_code == 200, one.text
    body = one.json()["request_body"]
    original = json.loads(sent[-1])
    assert body == original and list(body) == list(original)  # the client's key order too
    assert json.dumps(body, ensure_ascii=False, separators=(",", ":")) == sent[-1].decode()


def test_body_retention_drops_old_bodies_keeps_rows_and_recent_bodies(
    start_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    db = tmp_path / "rows.db"
    session = list(agent_session(3, seed=5))
    now = datetime.now(UTC)
    sink = SqliteSink(str(db), "llm_requests")
    sink.connect()
    for record in records(session, now - timedelta(days=10)) + records(session[:1], now):
        sink.write([row_values(record, body_max_bytes=None)])
    sink.close()
    providers = write_providers(tmp_path / "providers.toml", upstream.url)
    proxy = start_proxy(["--mode", f"reverse:{upstream.url}@0", "--set", f"llm_providers={providers}",
                         "--set", f"llm_db=sqlite:///{db}", "--set", "llm_body_retention_days=7"])
    proxy.wait_for_log("llm-proxy body retention: bodies of 3 rows older than", timeout=30)
    conn = sqlite3.connect(db)
    got = conn.execute("SELECT ts < ?, request_body FROM llm_requests_full ORDER BY id", (now.isoformat(),)).fetchall()
    conn.close()
    assert got == [(1, None)] * 3 + [(0, session[0][0].decode())]


def test_retention_option_is_validated(tmp_path: Path) -> None:
    output = run_mitmdump_expecting_failure(["--set", "llm_body_retention_days=-1"], tmp_path / "conf")
    assert "llm_body_retention_days must be 0" in output
