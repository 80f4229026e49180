"""Model calls and the rest: what is recorded, and what may carry a provider's real key.

Coding agents talk to their provider's host about much more than models:
Claude Code posts telemetry batches of 100+ KB to `/api/event_logging/v2/batch`,
fetches `/api/claude_code/settings`, `policy_limits`, `/api/claude_cli/bootstrap`,
`/mcp-registry/...`, and sends `HEAD /anthropic` on every start. None of that is
an LLM call: it has no model, no tokens and no cost, so by default it passes
through untouched and leaves no row (`llm_record=models`). The API shape of a
path (llm_proxy/apis.py) is what tells the two apart, never the host.
"""

from __future__ import annotations

import re

from .. import apis

RECORD_MODELS = "models"
RECORD_ALL = "all"
RECORD_CHOICES = (RECORD_MODELS, RECORD_ALL)

# GET .../models and GET .../models/<id> (OpenAI, Anthropic, Gemini, OpenRouter, ...): the list
# of models an SDK or an editor asks for to validate a key. Read-only and free.
_MODEL_LISTING = re.compile(r"/models(/[^/:?]+)?/?$")


def is_model_call(api: str) -> bool:
    """A path of a known API shape (chat, completions, embeddings, responses, messages,
    count_tokens, generateContent, Ollama native, ...): the calls rows are for."""
    return api != apis.OTHER


def recorded(api: str, record_all: bool) -> bool:
    """Whether a provider call gets a row."""
    return record_all or is_model_call(api)


def model_listing(method: str, bare_path: str) -> bool:
    """A read-only model listing: the one non-model call a provider's real key may be sent with
    in keys mode (clients check their key with it; it costs nothing and changes nothing)."""
    return method == "GET" and _MODEL_LISTING.search(bare_path) is not None


def may_carry_real_key(api: str, method: str, bare_path: str) -> bool:
    """In keys mode the proxy swaps a virtual key for the provider's real key only on model
    calls (which it meters, limits and budgets) and model listings. Any other path (files,
    batches, fine-tuning, admin, an agent's telemetry) goes upstream with no credential at
    all: a virtual key must never buy unmetered use of the real account."""
    return is_model_call(api) or model_listing(method, bare_path)
