"""Real-browser fixtures: Debian's chromium driven by Playwright, a real mitmdump with our addon.

The browser is the system's /usr/bin/chromium (no Playwright browser download:
CI installs the Debian package). A missing chromium fails these tests with a
message saying what to install; it never skips them, so a CI without a browser
cannot pass unnoticed.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.e2e.conftest import Proxy, pg_table, pg_url, upstream, write_providers  # noqa: F401  (fixtures)

CHROMIUM = Path(os.environ.get("LLM_PROXY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
CLI = Path(sys.executable).with_name("llm-proxy")
ADMIN_KEY = "admin-" + secrets.token_urlsafe(16)
REAL_KEYS = {"OPENAI_API_KEY": "sk-real-openai-browser-test", "ANTHROPIC_API_KEY": "sk-ant-real-browser-test"}


@pytest.fixture(scope="module")  # not session: its event loop must be gone before other modules run
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(or point LLM_PROXY_CHROMIUM at a Chromium binary); they do not skip",
            pytrace=False,
        )
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


def create_key(keys_file: Path, name: str, *flags: str) -> str:
    """A virtual key made with the real CLI; its secret."""
    done = subprocess.run([str(CLI), "keys", "--keys-file", str(keys_file), "create", name, *flags],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_proxy(tmp: Path, upstream_url: str, db: str, table: str, *extra: str, keys_file: Path | None = None
                ) -> Proxy:
    """A reverse proxy to the fake upstream with an admin key, optionally in keys mode."""
    providers = write_providers(tmp / "providers.toml", upstream_url)
    if keys_file is not None:
        text = providers.read_text()
        for name, env in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")):
            text = text.replace(f"[providers.{name}]\n", f'[providers.{name}]\napi_key_env = "{env}"\n')
        providers.write_text(text)
    args = [
        "--mode", f"reverse:{upstream_url}@0",
        "--set", f"llm_providers={providers}",
        "--set", f"llm_db={db}",
        "--set", f"llm_table={table}",
        "--set", f"llm_admin_key={ADMIN_KEY}",
        "--set", "llm_budget_refresh=1",
        *extra,
    ]
    if keys_file is not None:
        args += ["--set", f"llm_keys={keys_file}"]
    proxy = Proxy(args, confdir=tmp / "conf", env=REAL_KEYS).start()
    proxy.wait_for_log("llm-proxy writing rows to")
    return proxy


class Admin:
    """The control plane's JSON API, called the way a script would (the truth the page is checked against)."""

    def __init__(self, proxy: Proxy) -> None:
        self.client = httpx.Client(base_url=proxy.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.client.get(path, params=params)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def close(self) -> None:
        self.client.close()


class StaticSite:
    """A page on another origin (its own port), for the CORS tests: serves one HTML document."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="static-site", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

