"""A real Node client in regular mode: the README's recipe on the machine's Node (20 here).

Node 20's fetch() ignores HTTPS_PROXY (and NODE_USE_ENV_PROXY), so a Node LLM
client bypasses the proxy and leaves no row. The recipe: undici's
EnvHttpProxyAgent as the global dispatcher (tests/node/use-proxy.mjs, loaded with
`node --import`), and mitmproxy's CA from the proxy's confdir in
NODE_EXTRA_CA_CERTS. The openai npm SDK (global fetch) then goes through a real
mitmdump to a TLS upstream, and its calls are rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream

from .conftest import ProxyFactory, Rows, drop_table, new_key

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
FILES = ("package.json", "package-lock.json", "use-proxy.mjs", "client.mjs")


@pytest.fixture(scope="module")
def node_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/node installed with `npm ci` in a temp dir (the checkout stays clean)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Node regular-mode test", pytrace=False)
    app = tmp_path_factory.mktemp("node-app")
    for name in FILES:
        shutil.copy(NODE_DIR / name, app / name)
    done = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=app, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return app


def test_node_client_through_regular_mode_is_metered(node_app: Path, tmp_path: Path, pg_url: str,
                                                    start_proxy: ProxyFactory) -> None:
    table = "llmp_test_node_" + os.urandom(4).hex()
    with FakeUpstream(tls=True).start() as api:  # stands in for https://api.openai.com
        providers = tmp_path / "providers.toml"
        providers.write_text(f'[providers.openai]\nbase_url = "{api.url}"\nformat = "openai"\n')
        proxy = start_proxy(["--mode", "regular@0", "--set", f"llm_providers={providers}",
                             "--set", f"llm_db={pg_url}", "--set", f"llm_table={table}",
                             "--set", "ssl_insecure=true"])  # the fake's own certificate is self-signed
        key = new_key()
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({
            "HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url, "NO_PROXY": "",
            "NODE_EXTRA_CA_CERTS": str(proxy.confdir / "mitmproxy-ca-cert.pem"),
            "OPENAI_BASE_URL": f"{api.url}/v1", "OPENAI_API_KEY": key,
        })
        try:
            done = subprocess.run(["node", "--import", "./use-proxy.mjs", "client.mjs"], cwd=node_app, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr[-2000:]
            out = json.loads(done.stdout.strip().splitlines()[-1])
            assert out["usage"]["prompt_tokens"] == 11 and out["streamed"] == "w0 w1 w2 w3 w4 w5 w6 "
            json_row, stream_row = Rows(pg_url, table).wait(key, 2)
            assert (json_row["api"], json_row["streaming"], json_row["input_tokens"], json_row["output_tokens"]) == (
                "openai-chat", False, 11, 7)
            # Streamed: the proxy asked for usage (include_usage) and hid its chunk from the client.
            assert (stream_row["streaming"], stream_row["input_tokens"], stream_row["output_tokens"]) == (True, 11, 7)
            assert json_row["cost_usd"] is not None and json_row["cost_usd"] > 0
            assert api.requests[-1].json["stream_options"] == {"include_usage": True}
        finally:
            proxy.stop()
            drop_table(pg_url, table)
