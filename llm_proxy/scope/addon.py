"""The `llm_record` option: rows for model calls only (default), or for every provider call."""

from __future__ import annotations

import logging
from typing import Protocol

from mitmproxy import ctx, exceptions

from .filter import RECORD_ALL, RECORD_CHOICES, RECORD_MODELS

logger = logging.getLogger(__name__)


class Recorder(Protocol):
    record_all: bool


class Scope:
    """Declares and checks `llm_record`, and tells the metering addon what it says."""

    def __init__(self, metering: Recorder) -> None:
        self.metering = metering

    def load(self, loader) -> None:
        loader.add_option(
            "llm_record", str, RECORD_MODELS,
            "Which provider calls get a row: 'models' (calls of a known API shape: chat, completions, "
            "embeddings, responses, messages, count_tokens, generateContent, Ollama's API) or 'all' "
            "(every request to a provider host, non-model ones without bodies). Non-model calls pass "
            "through either way.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llm_record" not in updated:
            return
        value = ctx.options.llm_record.strip().lower()
        if value not in RECORD_CHOICES:
            raise exceptions.OptionsError(
                f"llm_record must be one of {', '.join(RECORD_CHOICES)}, not {ctx.options.llm_record!r}"
            )
        self.metering.record_all = value == RECORD_ALL
