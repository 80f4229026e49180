"""Usage extraction: one module per provider family, chosen by API shape."""

from __future__ import annotations

from typing import Any

from .. import apis
from . import anthropic, bedrock, gemini, ollama, openai
from .base import StreamParser
from .model import Usage, error_text, text, tier_name

__all__ = ["StreamParser", "Usage", "error_text", "json_usage", "stream_parser"]


def json_usage(api: str, body: Any) -> tuple[Usage, str | None]:
    """Usage and response model of a complete (non-streamed) JSON response."""
    if not isinstance(body, dict):
        return Usage(), None
    model = text(body.get("model"))
    if api in (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS, apis.OPENAI_EMBEDDINGS):
        usage = openai.chat_usage(body.get("usage"), embeddings=api == apis.OPENAI_EMBEDDINGS)
        usage.service_tier = tier_name(body.get("service_tier"))
        return usage, model
    if api == apis.OPENAI_RESPONSES:
        usage = openai.responses_usage(body.get("usage"))
        usage.service_tier = tier_name(body.get("service_tier"))
        return usage, model
    if api in (apis.ANTHROPIC_MESSAGES, apis.VERTEX_ANTHROPIC):
        return anthropic.messages_usage(body.get("usage")), model
    if api == apis.BEDROCK_CONVERSE:
        return bedrock.converse_usage(body.get("usage")), None
    if api == apis.BEDROCK_INVOKE:
        return bedrock.invoke_usage(body), None  # priced by the path's model id (usage/bedrock.py)
    if api == apis.GEMINI_GENERATE:
        return gemini.generate_usage(body.get("usageMetadata")), gemini.response_model(body)
    if api in (apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE, apis.OLLAMA_EMBED):
        return ollama.native_usage(body), model
    return Usage(), model


def stream_parser(api: str, *, strip_usage_chunk: bool = False) -> StreamParser | None:
    """A fresh parser for a streamed response of this shape, or None if it has no stream form."""
    if api == apis.OPENAI_CHAT:
        return openai.ChatStream(strip_usage_chunk=strip_usage_chunk)
    if api == apis.OPENAI_COMPLETIONS:
        return openai.ChatStream(strip_usage_chunk=strip_usage_chunk, legacy=True)
    if api == apis.OPENAI_RESPONSES:
        return openai.ResponsesStream()
    if api in (apis.ANTHROPIC_MESSAGES, apis.VERTEX_ANTHROPIC):
        return anthropic.MessagesStream()
    if api == apis.BEDROCK_CONVERSE:
        return bedrock.ConverseStream()
    if api == apis.BEDROCK_INVOKE:
        return bedrock.InvokeStream()
    if api == apis.GEMINI_GENERATE:
        return gemini.GenerateStream()
    if api in (apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE):
        return ollama.NativeStream()
    return None
