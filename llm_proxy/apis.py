"""The API shape of a call, decided by its path, never by its provider.

One upstream can speak several shapes (Ollama serves its native API, the
OpenAI one and the Anthropic one), so the path is the only reliable signal.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

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
# AWS Bedrock runtime: Converse / ConverseStream (Bedrock's own shape), and InvokeModel /
# InvokeModelWithResponseStream (the model's native body: Anthropic Messages for Claude).
BEDROCK_CONVERSE = "bedrock-converse"
BEDROCK_INVOKE = "bedrock-invoke"
# Google Vertex AI's Anthropic models: Messages bodies through `:rawPredict` / `:streamRawPredict`.
VERTEX_ANTHROPIC = "vertex-anthropic"
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

# Bedrock runtime: `/model/{modelId}/{operation}`; the operation is the last segment.
_BEDROCK_OPERATIONS = {
    "converse": BEDROCK_CONVERSE,
    "converse-stream": BEDROCK_CONVERSE,
    "invoke": BEDROCK_INVOKE,
    "invoke-with-response-stream": BEDROCK_INVOKE,
}
_STREAM_ENDINGS = (":streamGenerateContent", ":streamRawPredict", "/converse-stream", "/invoke-with-response-stream")
_VERTEX_ANTHROPIC = "/publishers/anthropic/models/"

# Shapes whose calls produce billed tokens; the rest are recorded without usage.
METERED = frozenset({
    OPENAI_CHAT, OPENAI_COMPLETIONS, OPENAI_EMBEDDINGS, OPENAI_RESPONSES,
    ANTHROPIC_MESSAGES, GEMINI_GENERATE, OLLAMA_CHAT, OLLAMA_GENERATE, OLLAMA_EMBED,
    BEDROCK_CONVERSE, BEDROCK_INVOKE, VERTEX_ANTHROPIC,
})
# Shapes that cost nothing by definition (token counting is not a generation).
FREE = frozenset({ANTHROPIC_COUNT_TOKENS})
# Shapes whose model is named by the path, not the body.
MODEL_IN_PATH = frozenset({GEMINI_GENERATE, BEDROCK_CONVERSE, BEDROCK_INVOKE, VERTEX_ANTHROPIC})
# Shapes that only ever go, unchanged, to the provider the client addressed: Bedrock requests are
# signed (SigV4 covers the host, path and body) and Vertex's Anthropic path names its own model,
# so neither can be retried elsewhere, moved to another provider or rewritten.
PASS_THROUGH = frozenset({BEDROCK_CONVERSE, BEDROCK_INVOKE, VERTEX_ANTHROPIC})


def api_for_path(path: str) -> str:
    """Classify a request path (without query string)."""
    path = path.rstrip("/")
    if path.endswith((":rawPredict", ":streamRawPredict")):
        marker = path.rfind(_VERTEX_ANTHROPIC)
        if marker < 0:
            return OTHER  # other publishers' rawPredict bodies are the model's own, not one we read
        model = path[marker + len(_VERTEX_ANTHROPIC):].partition(":")[0]
        return ANTHROPIC_COUNT_TOKENS if model == "count-tokens" else VERTEX_ANTHROPIC
    head, _, operation = path.rpartition("/")
    bedrock = _BEDROCK_OPERATIONS.get(operation)
    if bedrock is not None and head.rpartition("/")[0].endswith("/model"):
        return bedrock
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api
    return OTHER


def model_from_path(path: str, api: str = GEMINI_GENERATE) -> str | None:
    """The model a path names: Gemini and Vertex `.../models/{model}:generateContent`,
    Bedrock `/model/{modelId}/converse` (percent-decoded: SDKs send `v1%3A0`), and Azure
    OpenAI's `/openai/deployments/{deployment}/...` (a deployment is named after its model)."""
    if api in (BEDROCK_CONVERSE, BEDROCK_INVOKE):
        head = path.rstrip("/").rpartition("/")[0]
        prefix, _, model_id = head.rpartition("/")
        if not prefix.endswith("/model") or not model_id:
            return None
        return _bedrock_model(unquote(model_id))
    if api not in MODEL_IN_PATH:
        marker = "/openai/deployments/"
        start = path.find(marker)
        if start < 0:
            return None
        return unquote(path[start + len(marker):].partition("/")[0]) or None
    marker = "/models/"
    start = path.find(marker)
    if start < 0:
        return None
    rest = path[start + len(marker):]
    return unquote(rest.split(":", 1)[0]) or None


def _bedrock_model(model_id: str) -> str:
    """A model id, or the last part of an inference-profile or foundation-model ARN
    (`arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude-...`), which prices."""
    if model_id.startswith("arn:") and "/" in model_id:
        return model_id.rpartition("/")[2]
    return model_id


def wants_stream(api: str, path: str, body: Any) -> bool:
    """Whether the client asked for a streamed answer."""
    if api in MODEL_IN_PATH:
        return path.rstrip("/").endswith(_STREAM_ENDINGS)
    stream = body.get("stream") if isinstance(body, dict) else None
    if api in (OLLAMA_CHAT, OLLAMA_GENERATE):
        return stream is not False  # Ollama streams unless told not to
    return stream is True
