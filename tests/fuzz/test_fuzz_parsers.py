"""Usage parsers on random JSON: they never raise, and every count they report is a usable one.

The meter and close_call catch a parser's exception, but then the call loses its usage (or its row:
a count that is NaN crashes row building), so the parsers themselves must take anything. Every count
of the resulting Usage must be None (unknown) or a non-negative int that fits a bigint column.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llm_proxy import apis
from llm_proxy.usage import Usage, json_usage, stream_parser

from .strategies import (
    anthropic_usage,
    count_value,
    dump,
    gemini_usage,
    json_value,
    ollama_final,
    openai_usage,
)

BIGINT = 2**63 - 1
USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                "reasoning_tokens", "web_search_requests")
STREAMED = [apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS, apis.OPENAI_RESPONSES, apis.ANTHROPIC_MESSAGES,
            apis.GEMINI_GENERATE, apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE]
ALL_APIS = [*STREAMED, apis.OPENAI_EMBEDDINGS, apis.OLLAMA_EMBED, apis.ANTHROPIC_COUNT_TOKENS, apis.OTHER]


def _assert_usable(usage: Usage) -> None:
    for name in (*USAGE_FIELDS, "total_tokens"):
        value = getattr(usage, name)
        assert value is None or (type(value) is int and 0 <= value <= BIGINT), f"{name} = {value!r}"


def _parse(text: str) -> Any:
    """As the proxy parses a body (Python's json: NaN, Infinity and 1e400 come back as floats)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


# A response body in any provider's shape, holding a usage object drawn from hostile counts.
usage_body = st.one_of(
    st.builds(lambda u: {"model": "m", "usage": u}, openai_usage()),
    st.builds(lambda u: {"model": "m", "usage": u}, openai_usage(responses=True)),
    st.builds(lambda u: {"model": "m", "usage": u}, anthropic_usage()),
    st.builds(lambda u: {"modelVersion": "m", "usageMetadata": u}, gemini_usage()),
    ollama_final(),
    json_value,
)


@given(st.sampled_from(ALL_APIS), usage_body)
def test_json_usage_takes_any_body(api: str, body: Any) -> None:
    parsed = _parse(dump(body))
    usage, model = json_usage(api, parsed)
    _assert_usable(usage)
    assert model is None or isinstance(model, str)


def _events(api: str, draw: st.DrawFn) -> list[tuple[str | None, str]]:
    """Events in the API's own stream shape, with hostile usage, plus random JSON."""
    if api in (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS):
        usage = draw(openai_usage())
        return [(None, dump({"choices": [{"index": 0, "delta": {"content": "x"}, "text": "x"}]})),
                (None, dump({"choices": [], "usage": usage})), (None, "[DONE]")]
    if api == apis.OPENAI_RESPONSES:
        kind = draw(st.sampled_from(["response.completed", "response.incomplete", "response.failed"]))
        return [(kind, dump({"type": kind, "response": {"model": "m", "usage": draw(openai_usage(responses=True))}}))]
    if api == apis.ANTHROPIC_MESSAGES:
        return [("message_start", dump({"type": "message_start",
                                        "message": {"model": "m", "usage": draw(anthropic_usage())}})),
                ("message_delta", dump({"type": "message_delta", "usage": draw(anthropic_usage())}))]
    if api == apis.GEMINI_GENERATE:
        return [(None, dump({"usageMetadata": draw(gemini_usage())}))]
    return [(None, dump(draw(ollama_final())))]


@given(st.sampled_from(STREAMED), st.data())
def test_stream_parsers_take_any_events(api: str, data: st.DataObject) -> None:
    parser = stream_parser(api, strip_usage_chunk=data.draw(st.booleans()))
    assert parser is not None
    events = _events(api, data.draw)
    events += [(data.draw(st.one_of(st.none(), st.text(max_size=20))), dump(data.draw(json_value)))
               for _ in range(data.draw(st.integers(0, 2)))]
    for name, text in data.draw(st.permutations(events)):
        keep = parser.on_event(name, text)
        assert keep in (True, False)
    parser.finish()
    _assert_usable(parser.usage)
    json.dumps(parser.body(), default=str)  # the writer must be able to store what it rebuilt


@given(count_value)
def test_a_single_hostile_count_is_unknown_or_usable(value: Any) -> None:
    """The smallest case: one count in an OpenAI usage object."""
    parsed = _parse(dump({"usage": {"prompt_tokens": value, "completion_tokens": 1}}))
    usage, _ = json_usage(apis.OPENAI_CHAT, parsed)
    _assert_usable(usage)
