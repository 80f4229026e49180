"""End-to-end fixtures: a real mitmdump with our addon, a fake upstream, a real PostgreSQL.

One proxy and one table serve a whole module; each test tells its rows apart by
the API key its client presents (passthrough mode stores the key's fingerprint
as key_id), so tests stay independent without paying a proxy start each.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import psycopg
import pytest
from psycopg.rows import dict_row

from llm_proxy.control.reports import drop_calls_table
from llm_proxy.redact import fingerprint
from tests.fakes.process import LISTENING, Service
from tests.fakes.upstream import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon" / "llm_proxy.py"
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PROVIDER_FORMATS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "ollama": "ollama"}

class Proxy(Service):
    """A mitmdump subprocess running addon/llm_proxy.py; its output is kept for inspection."""

    def __init__(
        self, args: list[str], *, confdir: Path, env: dict[str, str] | None = None, tool: str = "mitmdump"
    ) -> None:
        self.confdir = confdir
        quiet = [] if any(a.startswith("flow_detail=") for a in args) else ["--set", "flow_detail=0"]
        cmd = [
            str(BIN / tool), "-s", str(ADDON), "--listen-host", "127.0.0.1",
            "--set", f"confdir={confdir}", *quiet, *args,
        ]
        # The journal and embedded database of this proxy stay in its own directory.
        super().__init__(tool, cmd, LISTENING, {"LLM_PROXY_HOME": str(confdir / "home"), **(env or {})},
                         max_lines=None)

    @property
    def port(self) -> int:
        return int(self.group)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_mitmdump_expecting_failure(args: list[str], confdir: Path, timeout: float = 30) -> str:
    """Start mitmdump with a bad configuration; return its output once it has exited."""
    proxy = Proxy(args, confdir=confdir)
    proc = subprocess.run(proxy.cmd, capture_output=True, text=True, timeout=timeout, env=proxy.env, cwd=REPO)
    assert proc.returncode != 0, f"mitmdump should have refused to start:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def write_providers(path: Path, base_url: str, extra: str = "") -> Path:
    """A providers.toml sending every provider family to the fake upstream.

    Only "openai" claims the upstream's host, so it is the reverse target's
    provider; the others are reached by their path prefix.
    """
    tables = [
        f'[providers.{name}]\nbase_url = "{base_url}"\nformat = "{fmt}"\n'
        + ("" if name == "openai" else f'hosts = ["{name}.invalid"]\n')
        for name, fmt in PROVIDER_FORMATS.items()
    ]
    path.write_text("\n".join(tables) + extra)
    return path


class Rows:
    """Reads the rows a test produced, waiting for the writer thread to catch up."""

    def __init__(self, url: str, table: str) -> None:
        self.url = url
        self.table = table

    def fetch(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            # The view: large bodies are kept as parts by hash, and read back whole there.
            return conn.execute(f"SELECT * FROM {self.table}_full WHERE {where} ORDER BY id", params).fetchall()

    def wait(self, key: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        """The rows of calls made with passthrough API key `key`, once there are `count` of them."""
        return self.wait_for("key_id = %s", (fingerprint(key),), count, timeout)

    def wait_for(self, where: str, params: tuple[Any, ...], count: int = 1, timeout: float = 15
                 ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.fetch(where, params)
            except psycopg.errors.UndefinedTable:
                rows = []  # the writer connects (and applies schema.sql) off the proxy's hot path: not yet
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) == count, f"expected {count} rows where {where} {params}, found {len(rows)}"
                return rows
            time.sleep(0.05)


def scenario(**fields: object) -> dict[str, str]:
    """Headers telling the fake upstream what to do (usage, delays, failures)."""
    return {"x-fake-scenario": json.dumps(fields)}


def openai_client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def anthropic_client(proxy: Proxy, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{proxy.url}/anthropic", api_key=key, max_retries=0)


def new_key(prefix: str = "sk-test") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    try:
        with psycopg.connect(PG_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is needed for the end-to-end tests ({PG_URL}): {e}", pytrace=False)
    return PG_URL


@pytest.fixture(scope="module")
def pg_table(pg_url: str) -> Iterator[str]:
    table = f"llmp_test_{secrets.token_hex(6)}"
    yield table
    drop_table(pg_url, table)


def drop_table(pg_url: str, table: str) -> None:
    """The calls table and what the control plane keeps beside it (its hourly rollup)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        drop_calls_table(conn, table)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream().start() as up:
        yield up


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, pg_url: str, pg_table: str) -> Iterator[Proxy]:
    """Reverse proxy to the fake upstream as "openai", with every provider reachable by path."""
    tmp = tmp_path_factory.mktemp("proxy")
    providers = write_providers(tmp / "providers.toml", upstream.url)
    p = Proxy(
        [
            "--mode", f"reverse:{upstream.url}@0",
            "--set", f"llm_providers={providers}",
            "--set", f"llm_db={pg_url}",
            "--set", f"llm_table={pg_table}",
            "--set", "llm_body_max_bytes=65536",
            "--set", f"save_stream_file={tmp / 'flows.mitm'}",
        ],
        confdir=tmp / "conf",
    ).start()
    p.wait_for_log("llm-proxy writing rows to")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def rows(pg_url: str, pg_table: str) -> Rows:
    return Rows(pg_url, pg_table)


@pytest.fixture
def key() -> str:
    return new_key()


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start extra proxies with their own options; all stopped at the end of the test."""
    started: list[Proxy] = []

    def start(args: list[str], env: dict[str, str] | None = None, tool: str = "mitmdump") -> Proxy:
        proxy = Proxy(args, confdir=tmp_path / f"conf{len(started)}", env=env, tool=tool).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
