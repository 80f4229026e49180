"""The API shape of a call, decided by its path, never by its provider.

One upstream can speak several shapes (Ollama serves its native API, the
OpenAI one and the Anthropic one), so the path is the only reliable signal.
"""

from __future__ import annotations

from typing import Any

OPENAI_CHAT = "openai-chat"
OPENAI_COMPLETIONS = "openai-completions"
OPENAI_EMBEDDINGS = "openai-embeddings"
OPENAI_RESPONSES = "openai-responses"
ANTHROPIC_MESSAGES = "anthropic-messages"
ANTHROPIC_COUNT_TOKENS = "anthropic-count-tokens"
GEMINI_GENERATE = "gemini-generate"
OLLAMA_CHAT = "ollama-chat"
OLLAMA_GENERATE = "ollama-generate"
OLLAMA_EMBED = "ollama-embed"
OTHER = "other"

# First match wins: "/chat/completions" before "/completions", "/api/embeddings" before "/embeddings".
_SUFFIXES = (
    ("/api/embeddings", OLLAMA_EMBED),
    ("/chat/completions", OPENAI_CHAT),
    ("/completions", OPENAI_COMPLETIONS),
    ("/embeddings", OPENAI_EMBEDDINGS),
    ("/responses", OPENAI_RESPONSES),
    ("/messages/count_tokens", ANTHROPIC_COUNT_TOKENS),
    ("/messages", ANTHROPIC_MESSAGES),
    (":generateContent", GEMINI_GENERATE),
    (":streamGenerateContent", GEMINI_GENERATE),
    ("/api/chat", OLLAMA_CHAT),
    ("/api/generate", OLLAMA_GENERATE),
    ("/api/embed", OLLAMA_EMBED),
)

# Shapes whose calls produce billed tokens; the rest are recorded without usage.
METERED = frozenset({
    OPENAI_CHAT, OPENAI_COMPLETIONS, OPENAI_EMBEDDINGS, OPENAI_RESPONSES,
    ANTHROPIC_MESSAGES, GEMINI_GENERATE, OLLAMA_CHAT, OLLAMA_GENERATE, OLLAMA_EMBED,
})
# Shapes that cost nothing by definition (token counting is not a generation).
FREE = frozenset({ANTHROPIC_COUNT_TOKENS})


def api_for_path(path: str) -> str:
    """Classify a request path (without query string)."""
    path = path.rstrip("/")
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api
    return OTHER


def model_from_path(path: str) -> str | None:
    """Gemini names the model only in the path: `.../models/{model}:generateContent`."""
    marker = "/models/"
    start = path.find(marker)
    if start < 0:
        return None
    rest = path[start + len(marker):]
    return rest.split(":", 1)[0] or None


def wants_stream(api: str, path: str, body: Any) -> bool:
    """Whether the client asked for a streamed answer."""
    if api == GEMINI_GENERATE:
        return path.rstrip("/").endswith(":streamGenerateContent")
    stream = body.get("stream") if isinstance(body, dict) else None
    if api in (OLLAMA_CHAT, OLLAMA_GENERATE):
        return stream is not False  # Ollama streams unless told not to
    return stream is True
