"""Fallback across formats: serve an OpenAI chat call with an Anthropic model, and back.

Pure functions over parsed JSON (requests, responses, errors) and two small
incremental stream translators; no I/O (error types come from llm_proxy.errors), so the addon decides
when to translate and the meter keeps reading the provider's own counts.
"""

from __future__ import annotations

from .requests import chat_to_messages, messages_to_chat
from .responses import chat_to_messages_response, error_to_chat, error_to_messages, messages_to_chat_response
from .streams import ChatToMessagesStream, MessagesToChatStream

__all__ = [
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "chat_to_messages",
    "chat_to_messages_response",
    "error_to_chat",
    "error_to_messages",
    "messages_to_chat",
    "messages_to_chat_response",
]
