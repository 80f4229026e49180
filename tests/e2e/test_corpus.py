"""Real recorded provider responses, replayed through the proxy in small chunks.

The recordings are the team's reference corpus (shared/corpus, beside the
checkout), not part of the project: point LLM_PROXY_CORPUS at it. .ci/run
always does, so there the corpus can never be missing silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, Proxy, Rows, new_key

CORPUS = Path(os.environ.get("LLM_PROXY_CORPUS") or REPO.parent / "shared" / "corpus")


def _manifest() -> list[dict[str, Any]]:
    if not (CORPUS / "manifest.json").is_file():
        if os.environ.get("LLM_PROXY_CORPUS"):
            raise FileNotFoundError(f"LLM_PROXY_CORPUS={CORPUS} has no manifest.json")
        return []
    return json.loads((CORPUS / "manifest.json").read_text())


ENTRIES = _manifest()


def _request(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The path and body a client would have sent to get this recording."""
    model, stream = entry["model"], entry["stream"]
    if entry["api"] == "openai-chat":
        # Asking for usage ourselves keeps the usage chunk (if any) in what the client gets.
        body = {"model": model, "messages": [], "stream": stream}
        return "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}} if stream else body
    if entry["api"] == "openai-responses":
        return "/v1/responses", {"model": model, "input": "x", "stream": stream}
    if entry["api"] == "anthropic-messages":
        return "/anthropic/v1/messages", {"model": model, "max_tokens": 10, "messages": [], "stream": stream}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/gemini/v1beta/models/{model}:{method}", {"contents": []}


@pytest.mark.skipif(not ENTRIES, reason=f"reference corpus not found at {CORPUS} (set LLM_PROXY_CORPUS)")
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.get("name", "?") for e in ENTRIES])
def test_recorded_response_is_metered_exactly_and_passed_on_byte_for_byte(
    proxy: Proxy, rows: Rows, entry: dict[str, Any]
) -> None:
    key = new_key()
    recording = CORPUS / entry["file"]
    path, body = _request(entry)
    fake = {"replay": str(recording), "content_type": entry["content_type"], "chunk_size": 37, "delay": 0}
    headers = {"authorization": f"Bearer {key}", "x-fake-scenario": json.dumps(fake)}
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        response = http.post(path, json=body, headers=headers)
    assert response.status_code == 200
    assert response.content == recording.read_bytes()
    [row] = rows.wait(key)
    got = {field: row[field] for field in entry["expected"]}
    assert got == entry["expected"]
    assert row["streaming"] is entry["stream"] and row["error"] is None
