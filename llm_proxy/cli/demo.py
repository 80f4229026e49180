"""`scripts/proxy --demo`: the proxy and a fake upstream for every provider, offline.

For a first try with no API key and no network: the fake provider of the test
suite (tests/fakes/upstream.py, so this runs from a checkout) answers every
provider's API shape, JSON and streamed, with made-up text and usage. The
generated providers file keeps the real provider names (openai, anthropic,
gemini, ollama, ...), so rows are priced exactly as real calls would be, but
points every base_url at the fake: `/anthropic/...` never reaches the real
host. The demo providers need no key (no api_key_env), so one OpenAI client
reaches every provider by model name too.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from ..paths import DEFAULT_PROVIDERS, REPO_ROOT, state_dir

DEFAULT_PORT = 8080
_KEPT = ("format", "openai_base", "models", "inject_stream_usage")


def demo_providers(shipped: dict[str, Any], fake_url: str) -> dict[str, Any]:
    """The shipped providers file with every base_url on the fake upstream.

    "openai" claims the fake's host (it is the reverse target: plain /v1/... calls are
    OpenAI's); every other provider keeps its real host in `hosts`, so only its path
    prefix (/anthropic/..., /gemini/...) or its models route to it. No api_key_env:
    nothing needs a key; no base_url_env: OLLAMA_HOST must not move the demo.
    """
    fake_host = urlsplit(fake_url).netloc
    providers: dict[str, Any] = {}
    for name, table in shipped.get("providers", {}).items():
        real = urlsplit(table["base_url"])
        entry = {k: table[k] for k in _KEPT if k in table}
        entry["base_url"] = fake_url
        entry["hosts"] = [fake_host] if name == "openai" else list(table.get("hosts") or [real.netloc])
        providers[name] = entry
    out: dict[str, Any] = {"providers": providers}
    if shipped.get("models"):
        out["models"] = shipped["models"]
    return out


def banner(port: int, db_url: str) -> str:
    url = f"http://127.0.0.1:{port}"
    return f"""
llm-proxy demo: every provider is a fake on this machine; no key, no network needed.
Try (in another terminal, from the checkout):
  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}}'
  curl -s {url}/anthropic/v1/messages -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \\
       -d '{{"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{{"role": "user", "content": "hi"}}]}}'
  .venv/bin/python -c "import openai; print(openai.OpenAI(base_url='{url}/v1', api_key='demo')
       .chat.completions.create(model='gpt-4o-mini', messages=[{{'role': 'user', 'content': 'hi'}}]).usage)"
Rows:  scripts/llm-proxy report --db {db_url} --by model
Live:  {url}/_llm/dashboard
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/proxy --demo",
        description="llm-proxy with a fake upstream for every provider: priced rows, no API key.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"proxy port (default {DEFAULT_PORT})")
    parser.add_argument("--web", action="store_true", help="mitmweb's live UI instead of mitmdump")
    parser.add_argument("--db", metavar="URL", help="where the rows go (default: sqlite file demo.db in "
                                                     "$LLM_PROXY_HOME, ~/.llm-proxy)")
    args, extra = parser.parse_known_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.fakes.upstream import FakeUpstream
    except ImportError:
        print("llm-proxy: the demo needs a checkout of llm-proxy (it uses tests/fakes/upstream.py)", file=sys.stderr)
        return 1
    home = state_dir()
    demo_dir = home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    db_url = args.db or f"sqlite:///{home / 'demo.db'}"
    with open(DEFAULT_PROVIDERS, "rb") as f:
        shipped = tomllib.load(f)
    tool = "mitmweb" if args.web else "mitmdump"
    with FakeUpstream().start() as fake:
        providers = demo_dir / "providers.toml"
        providers.write_text("# made by scripts/proxy --demo: every provider on the fake upstream\n"
                             + tomli_w.dumps(demo_providers(shipped, fake.url)))
        cmd = [str(Path(sys.executable).parent / tool), "-s", str(REPO_ROOT / "addon" / "llm_proxy.py"),
               "--mode", f"reverse:{fake.url}@{args.port}", "--set", f"llm_providers={providers}",
               "--set", f"llm_db={db_url}", *extra]
        print(f"fake upstream for every provider at {fake.url}; providers file {providers}", flush=True)
        print(banner(args.port, db_url), flush=True)
        child = subprocess.Popen(cmd)
        # Ctrl-C reaches mitmdump too (same process group); a SIGTERM to us is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        return child.wait()


if __name__ == "__main__":
    sys.exit(main())
