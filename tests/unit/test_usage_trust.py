"""Trust the record: whatever an upstream sends, usage numbers are valid counts or unknown.

A count is a non-negative integer that fits PostgreSQL `integer` (2**31-1);
anything else is None. Parts that do not fit inside their whole (cache reads
plus writes inside input, reasoning inside output) make that side unknown.
`loads`, the parsers and the stream meter never raise, whatever the bytes.

The property tests take their budget from the hypothesis profile
(tests/conftest.py: "ci" by default, HYPOTHESIS_PROFILE=long for a hunt),
scaled per test so this file stays well under 20 s in the "ci" profile.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy import apis
from llm_proxy.config.pricing import Price, cost
from llm_proxy.stream.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder
from llm_proxy.stream.meter import StreamMeter
from llm_proxy.usage import Usage, error_text, json_usage, stream_parser
from llm_proxy.usage.anthropic import MessagesStream, messages_usage
from llm_proxy.usage.base import loads
from llm_proxy.usage.gemini import GenerateStream, generate_usage
from llm_proxy.usage.model import MAX_COUNT, count, detail
from llm_proxy.usage.ollama import NativeStream, native_usage
from llm_proxy.usage.openai import ChatStream, ResponsesStream, chat_usage, responses_usage
from tests.unit import transcripts as T

COUNT_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
                "cache_write_1h_tokens", "reasoning_tokens", "web_search_requests")
JSON_APIS = (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS, apis.OPENAI_EMBEDDINGS, apis.OPENAI_RESPONSES,
             apis.ANTHROPIC_MESSAGES, apis.GEMINI_GENERATE, apis.OLLAMA_CHAT, apis.OLLAMA_GENERATE,
             apis.OLLAMA_EMBED)
STREAM_APIS = (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS, apis.OPENAI_RESPONSES, apis.ANTHROPIC_MESSAGES,
               apis.GEMINI_GENERATE, apis.OLLAMA_CHAT)
PRICE = Price(input=Decimal(3), output=Decimal(15), cached_input=Decimal("0.3"), cache_write=Decimal("3.75"),
              cache_write_1h=Decimal(6), web_search=Decimal("0.01"))


def examples(weight: float) -> int:
    """This test's share of the active profile's budget ("ci": small; "long": a hunt)."""
    return max(10, int(settings().max_examples * weight))


def assert_trustworthy(usage: Usage) -> None:
    """Every count storable or None; the parts inside their wholes; the cost never negative."""
    for name in COUNT_FIELDS:
        value = getattr(usage, name)
        assert value is None or (type(value) is int and 0 <= value <= MAX_COUNT), (name, value)
    total = usage.total_tokens
    assert total is None or (type(total) is int and 0 <= total <= MAX_COUNT)
    if usage.input_tokens is not None:
        assert (usage.cached_tokens or 0) + (usage.cache_write_tokens or 0) <= usage.input_tokens
    if usage.cache_write_tokens is not None:
        assert (usage.cache_write_1h_tokens or 0) <= usage.cache_write_tokens
    if usage.output_tokens is not None:
        assert (usage.reasoning_tokens or 0) <= usage.output_tokens
    amount = cost(PRICE, usage)
    assert amount is None or amount >= 0


def storable(value: Any) -> bool:
    """A string a UTF-8 database or log accepts (no lone surrogates), or None."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    value.encode("utf-8")
    return True


# --- 1. a count is a non-negative integer that can be stored ------------------------------

NOT_COUNTS = [-5, -1, 12.7, -0.5, True, False, "abc", "12", [3], {"n": 3}, 2**31, 2**53 + 1, 10**30,
              float("nan"), float("inf"), float("-inf"), 1e400]


@pytest.mark.parametrize("value", NOT_COUNTS, ids=repr)
def test_a_value_that_is_not_a_count_is_unknown(value):
    assert count({"n": value}, "n") is None
    assert detail({"d": {"n": value}}, "d", "n") is None


@pytest.mark.parametrize("value,expected", [(0, 0), (12, 12), (12.0, 12), (-0.0, 0), (MAX_COUNT, MAX_COUNT),
                                            (float(MAX_COUNT), MAX_COUNT)])
def test_counts_and_integral_json_numbers_are_kept(value, expected):
    assert count({"n": value}, "n") == expected
    assert type(count({"n": value}, "n")) is int


def test_detail_keeps_absent_and_null_fields_as_zero():
    assert detail({"d": {}}, "d", "n") == 0
    assert detail({"d": {"n": None}}, "d", "n") == 0
    assert detail({}, "d", "n") is None


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_nan_and_infinite_json_numbers_give_a_row_with_unknown_counts(literal):
    # json.loads turns these into float nan/inf; int() of them raised, losing the whole row.
    body = json.loads(f'{{"model": "gpt-4o", "usage": {{"prompt_tokens": {literal}, "completion_tokens": 7,'
                      f' "prompt_tokens_details": {{"cached_tokens": {literal}}}}}}}')
    usage, model = json_usage(apis.OPENAI_CHAT, body)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, model) == (None, 7, None, "gpt-4o")
    stream = T.sse_event(f'{{"choices": [], "usage": {{"prompt_tokens": 3, "completion_tokens": {literal}}}}}')
    parser = T.feed(ChatStream(), SSEDecoder(), stream)
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (3, None)


@pytest.mark.parametrize("bad", NOT_COUNTS, ids=repr)
def test_every_parser_reads_a_bad_count_as_unknown(bad):
    assert chat_usage({"prompt_tokens": bad, "completion_tokens": 2}).input_tokens is None
    assert chat_usage({"prompt_tokens": 2, "completion_tokens": bad}).output_tokens is None
    assert chat_usage({"prompt_tokens": 9, "completion_tokens": bad}, embeddings=True).output_tokens is None
    assert chat_usage({"prompt_tokens": 9, "completion_tokens": 2,
                       "completion_tokens_details": {"reasoning_tokens": bad}}).reasoning_tokens is None
    assert responses_usage({"input_tokens": bad, "output_tokens": 2}).input_tokens is None
    assert responses_usage({"input_tokens": 9, "output_tokens": 2,
                            "input_tokens_details": {"cache_write_tokens": bad}}).cache_write_tokens is None
    anthropic = messages_usage({"input_tokens": 5, "cache_read_input_tokens": bad, "output_tokens": 1})
    assert (anthropic.input_tokens, anthropic.cached_tokens) == (None, None)  # the sum needs every part
    assert messages_usage({"input_tokens": 5, "output_tokens": 1,
                           "server_tool_use": {"web_search_requests": bad}}).web_search_requests is None
    gemini = generate_usage({"promptTokenCount": bad, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 1})
    assert (gemini.input_tokens, gemini.output_tokens) == (None, 1)
    thoughts = generate_usage({"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": bad})
    assert (thoughts.output_tokens, thoughts.reasoning_tokens) == (None, None)
    ollama = native_usage({"done": True, "prompt_eval_count": bad, "eval_count": 4})
    assert (ollama.input_tokens, ollama.output_tokens) == (None, 4)


def test_omitted_zero_counts_stay_zero():
    # Gemini (proto3) and Ollama (omitempty) leave out zero counts: absent is 0, not unknown.
    assert (native_usage({"done": True}).input_tokens, native_usage({"done": True}).output_tokens) == (0, 0)
    gemini = generate_usage({"promptTokenCount": 7})
    assert (gemini.input_tokens, gemini.output_tokens, gemini.cached_tokens) == (7, 0, 0)


def test_sums_past_the_column_bound_are_unknown():
    anthropic = messages_usage({"input_tokens": MAX_COUNT, "cache_read_input_tokens": 1, "output_tokens": 3})
    assert anthropic.input_tokens is None
    both = Usage(input_tokens=MAX_COUNT, output_tokens=1)
    assert both.total_tokens is None  # `integer` could not hold it
    assert Usage(input_tokens=MAX_COUNT - 1, output_tokens=1).total_tokens == MAX_COUNT


# --- 2. parts that do not fit their whole make that side unknown ---------------------------

def test_cached_tokens_above_input_make_the_input_side_unknown():
    usage = chat_usage({"prompt_tokens": 100, "completion_tokens": 10,
                        "prompt_tokens_details": {"cached_tokens": 150}})
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.total_tokens) == (None, None, 10, 10)
    assert cost(PRICE, usage) is None or cost(PRICE, usage) >= 0  # was -0.000045 before


def test_cache_reads_plus_writes_above_input_make_the_input_side_unknown():
    usage = responses_usage({"input_tokens": 100, "output_tokens": 10,
                             "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 50}})
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (None, None, None)
    assert usage.output_tokens == 10


def test_gemini_cache_above_prompt_makes_the_input_side_unknown():
    usage = generate_usage({"promptTokenCount": 10, "cachedContentTokenCount": 11, "candidatesTokenCount": 2})
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (None, None, 2)


def test_reasoning_above_output_makes_the_output_side_unknown():
    usage = chat_usage({"prompt_tokens": 100, "completion_tokens": 10,
                        "completion_tokens_details": {"reasoning_tokens": 64}})
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens, usage.total_tokens) == (
        100, None, None, 100)
    anthropic = messages_usage({"input_tokens": 5, "output_tokens": 10,
                                "output_tokens_details": {"thinking_tokens": 11}})
    assert (anthropic.output_tokens, anthropic.reasoning_tokens) == (None, None)


def test_parts_that_fit_are_kept():
    usage = Usage(input_tokens=100, cached_tokens=60, cache_write_tokens=40, cache_write_1h_tokens=40,
                  output_tokens=10, reasoning_tokens=10)
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens,
            usage.output_tokens, usage.reasoning_tokens, usage.total_tokens) == (100, 60, 40, 40, 10, 10, 110)


# --- 3. loads and the parsers never raise -------------------------------------------------

@pytest.mark.parametrize("depth", [20_000, 100_000])
def test_loads_of_absurdly_deep_json_is_not_json(depth):
    assert loads(b"[" * depth + b"]" * depth) is None
    assert loads('{"a":' * depth + "1" + "}" * depth) is None


def test_loads_reads_json_nested_as_deep_as_real_schemas():
    assert loads("[" * 500 + "]" * 500) is not None


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b'"\xff"', b"\x80", b"\xc3", b'{"a": "\xc3('])
def test_loads_of_invalid_utf8_is_not_json(raw):
    assert loads(raw) is None


def test_loads_of_a_lone_surrogate_is_a_str():
    assert loads(b'"\\ud800"') == "\ud800"
    assert loads(b'"\xed\xa0\x80"') == "\ud800"  # json decodes bytes with surrogatepass


def test_a_deeply_nested_tool_input_does_not_lose_the_stream():
    deep = "[" * 50_000 + "]" * 50_000
    events = [
        ("message_start", {"type": "message_start", "message": {"model": "claude-x", "usage": {
            "input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta", "partial_json": deep}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 30}}),
    ]
    data = b"".join(T.sse_event(T.compact(payload), event=name) for name, payload in events)
    parser = T.feed(MessagesStream(), SSEDecoder(), data)  # unguarded, as the relay feeds it
    assert (parser.usage.input_tokens, parser.usage.output_tokens) == (9, 30)
    assert parser.body()["content"][0]["input"] == deep  # kept as the text that was sent


def test_a_deep_element_of_a_gemini_array_keeps_the_usage_before_it():
    first = T.compact(T.gemini_chunk("hi", {"promptTokenCount": 4, "candidatesTokenCount": 2}, finish="STOP"))
    data = ("[" + first + "," + '{"a":' * 50_000 + "0" + "}" * 50_000 + "]").encode()
    meter = StreamMeter(GenerateStream(), JSONArrayDecoder())
    assert meter(data) is data
    assert meter(b"") == b""
    assert meter.parser.usage.input_tokens == 4
    assert meter.meter_error is None


@pytest.mark.parametrize("chunk", [
    {"id": "c", "choices": [{"index": [0], "delta": {"content": "a"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": {"a": 1}, "function": "f"}]}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 5}}]}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": 5}}, {"index": 0, "delta": {"content": "x"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": 5}}, {"index": 0, "delta": {"tool_calls": []}}]},
    {"id": "c", "choices": [{"index": "1", "text": 5}]},
])
def test_chat_stream_parser_survives_odd_chunks(chunk):
    for legacy in (False, True):
        parser = ChatStream(legacy=legacy)
        parser.on_event(None, json.dumps(chunk))
        parser.on_event(None, json.dumps({"choices": [{"index": 1, "delta": {"content": "ok"}, "text": "ok"}]}))
        parser.finish()
        json.dumps(parser.body())


@pytest.mark.parametrize("event", [
    {"type": "message_start", "message": {"model": 7, "usage": "lots"}},
    {"type": "content_block_start", "index": [1], "content_block": {"type": "text", "text": 5}},
    {"type": "content_block_delta", "index": {}, "delta": {"type": "text_delta", "text": "x"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 5}},
    {"type": "content_block_stop", "index": [0]},
])
def test_anthropic_stream_parser_survives_odd_events(event):
    parser = MessagesStream()
    parser.on_event(None, json.dumps({"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": 3, "citations": "x"}}))
    parser.on_event(None, json.dumps(event))
    parser.on_event(None, json.dumps({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "y"}}))
    parser.on_event(None, json.dumps({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "citations_delta", "citation": {}}}))
    parser.finish()
    assert parser.response_model is None or isinstance(parser.response_model, str)
    json.dumps(parser.body())


# --- 4. strings with lone surrogates --------------------------------------------------------

LONE = "gpt-4o-\ud800"


@pytest.mark.parametrize("api,body", [
    (apis.OPENAI_CHAT, {"model": LONE, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
    (apis.GEMINI_GENERATE, {"modelVersion": LONE, "usageMetadata": {"promptTokenCount": 1}}),
    (apis.OLLAMA_CHAT, {"model": LONE, "done": True}),
])
def test_a_lone_surrogate_model_name_becomes_storable(api, body):
    assert json_usage(api, body)[1] == "gpt-4o-\ufffd"


@pytest.mark.parametrize("api,event", [
    (apis.OPENAI_CHAT, {"model": LONE, "choices": []}),
    (apis.OPENAI_RESPONSES, {"type": "response.completed", "response": {"model": LONE, "usage": None}}),
    (apis.ANTHROPIC_MESSAGES, {"type": "message_start", "message": {"model": LONE}}),
    (apis.GEMINI_GENERATE, {"modelVersion": LONE}),
    (apis.OLLAMA_CHAT, {"model": LONE, "done": True}),
])
def test_a_lone_surrogate_in_a_stream_model_name_becomes_storable(api, event):
    parser = stream_parser(api)
    parser.on_event(None, json.dumps(event))
    assert parser.response_model == "gpt-4o-\ufffd"


@pytest.mark.parametrize("obj", [{"error": "bad \udfff"}, {"error": {"type": "x\ud800", "message": "m"}},
                                 {"type": "error", "error": {"type": "overloaded_error", "message": "\udc80"}}])
def test_a_lone_surrogate_error_text_becomes_storable(obj):
    assert storable(error_text(obj))
    assert "\ufffd" in error_text(obj)


# --- properties -----------------------------------------------------------------------------

USAGE_KEYS = ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
              "completion_tokens_details", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
              "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details",
              "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation",
              "ephemeral_1h_input_tokens", "thinking_tokens", "server_tool_use", "web_search_requests",
              "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "toolUsePromptTokenCount",
              "cachedContentTokenCount", "prompt_eval_count", "eval_count", "done", "usage", "usageMetadata",
              "model", "modelVersion", "response", "type", "message", "delta", "choices", "index", "error",
              "content_block", "tool_calls", "function", "arguments", "text", "partial_json", "citations"]

numbers = st.one_of(
    st.integers(min_value=-10, max_value=2**40),
    st.sampled_from([0, 1, MAX_COUNT, MAX_COUNT + 1, 2**53, 2**53 + 1, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2.0**32).map(math.floor),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8),
                    st.sampled_from(["\ud800", "message_start", "message_delta", "content_block_delta",
                                     "input_json_delta", "text_delta", "citations_delta", "error",
                                     "response.completed", "[DONE]"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(USAGE_KEYS), st.text(max_size=4)),
                                            inner, max_size=6)),
    max_leaves=8,
)
json_objects = st.dictionaries(st.sampled_from(USAGE_KEYS), json_values, max_size=5)


@settings(max_examples=examples(2))
@given(st.one_of(scalars, st.dictionaries(st.sampled_from(USAGE_KEYS),
                                          st.one_of(scalars, st.dictionaries(st.sampled_from(USAGE_KEYS), scalars)))),
       st.sampled_from(USAGE_KEYS), st.sampled_from(USAGE_KEYS))
def test_property_count_and_detail_give_a_storable_count_or_none(obj, key, field):
    for value in (count(obj, key), count(obj, key, field), detail(obj, key, field), count({"k": obj}, "k")):
        assert value is None or (type(value) is int and 0 <= value <= MAX_COUNT)


def _real_events() -> dict[str, list[tuple[str | None, Any]]]:
    """Every event of the transcripts, parsed, by API: the templates the parser property mutates."""
    streams = [(apis.OPENAI_CHAT, T.openai_chat_stream()[0]), (apis.OPENAI_CHAT, T.openai_tool_call_stream()),
               (apis.OPENAI_CHAT, T.openai_chat_stream_error()), (apis.OPENAI_COMPLETIONS, T.openai_completions_stream()[0]),
               (apis.OPENAI_RESPONSES, T.responses_stream()), (apis.OPENAI_RESPONSES, T.responses_stream_error_event()),
               (apis.ANTHROPIC_MESSAGES, T.anthropic_stream()), (apis.ANTHROPIC_MESSAGES, T.anthropic_server_tool_stream()),
               (apis.ANTHROPIC_MESSAGES, T.anthropic_overloaded_stream()), (apis.GEMINI_GENERATE, T.gemini_sse()),
               (apis.GEMINI_GENERATE, T.gemini_error_sse()), (apis.OLLAMA_CHAT, T.ollama_chat_lines())]
    events: dict[str, list[tuple[str | None, Any]]] = {}
    for api, data in streams:
        decoder = NDJSONDecoder() if api == apis.OLLAMA_CHAT else SSEDecoder()
        for event in decoder.feed(data) + decoder.flush():
            if loads(event.data) is not None:
                events.setdefault(api, []).append((event.name, loads(event.data)))
    return events


REAL_EVENTS = _real_events()
REAL_BODIES = [
    {"model": T.SNAPSHOT, "usage": T.USAGE_WITH_DETAILS}, {"model": T.SNAPSHOT, "usage": T.USAGE_NO_DETAILS},
    {"model": "o4-mini", "usage": T.RESPONSES_USAGE},
    {"model": T.ANTHROPIC_MODEL, "usage": {"input_tokens": 50, "cache_creation_input_tokens": 2000,
                                           "cache_read_input_tokens": 10000, "output_tokens": 400,
                                           "cache_creation": {"ephemeral_1h_input_tokens": 500},
                                           "output_tokens_details": {"thinking_tokens": 120},
                                           "server_tool_use": {"web_search_requests": 1}}},
    {"modelVersion": T.GEMINI_MODEL, "usageMetadata": T.GEMINI_FINAL_USAGE},
    {"model": T.OLLAMA_MODEL, "done": True, "prompt_eval_count": 26, "eval_count": 290},
]
small_json = st.one_of(st.lists(scalars, max_size=2), st.dictionaries(st.sampled_from(USAGE_KEYS), scalars, max_size=2),
                       scalars)


# Fields whose type the parsers depend on (as keys, indices, strings to join, counts).
HOT_KEYS = {*USAGE_KEYS, "content"}
_any_index = st.integers(min_value=0, max_value=2**16)
_few = st.integers(min_value=0, max_value=4)
_decile = st.integers(min_value=0, max_value=9)  # == 5: about one in ten (0 and 9 are drawn far more often)


def _mutate(draw: st.DrawFn, obj: Any) -> Any:
    """A copy of `obj` with a few values, anywhere in it, replaced by odd JSON.

    Fixed strategies only, drawn as numbers and reduced here: building a strategy per draw is slow.
    """
    obj = json.loads(json.dumps(obj))
    for _ in range(draw(_few)):
        node = obj
        while isinstance(node, (dict, list)) and node:
            keys = sorted(node) if isinstance(node, dict) else range(len(node))
            hot = [k for k in keys if k in HOT_KEYS]
            pool = hot if hot and draw(_few) else keys  # mostly the fields the parsers rely on
            key = pool[draw(_any_index) % len(pool)]
            if not isinstance(node[key], (dict, list)) or draw(_decile) == 5:  # now and then a whole container
                node[key] = draw(small_json)
                break
            node = node[key]
    return obj


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A real response body of some API, mutated."""
    return _mutate(draw, REAL_BODIES[draw(_any_index) % len(REAL_BODIES)])


@st.composite
def mutated_events(draw: st.DrawFn, api: str) -> tuple[str | None, str]:
    """A real stream event of `api`, mutated (and now and then its text cut short)."""
    templates = REAL_EVENTS[api]
    name, obj = templates[draw(_any_index) % len(templates)]
    data = json.dumps(_mutate(draw, obj))
    if draw(_decile) == 5:  # now and then an event cut short
        data = data[:draw(_any_index) % (len(data) + 1)]
    return name, data


@settings(max_examples=examples(2))
@given(st.sampled_from(JSON_APIS), st.one_of(mutated_bodies(), json_objects))
def test_property_json_usage_never_raises_and_gives_trustworthy_counts(api, body):
    usage, model = json_usage(api, body)
    assert_trustworthy(usage)
    assert storable(model)
    for direct in (chat_usage(body.get("usage")), responses_usage(body), messages_usage(body.get("usage")),
                   generate_usage(body.get("usageMetadata")), native_usage(body)):
        assert_trustworthy(direct)


@settings(max_examples=examples(2))
@given(st.sampled_from(STREAM_APIS).flatmap(lambda api: st.tuples(st.just(api), st.lists(mutated_events(api),
                                                                                        max_size=12))),
       st.booleans())
def test_property_stream_parsers_never_raise_on_any_event(api_events, strip):
    # The relay feeds parsers without a guard, so a parser must survive every event itself.
    api, events = api_events
    parser = stream_parser(api, strip_usage_chunk=strip)
    for name, data in events:
        assert parser.on_event(name, data) in (True, False)
        assert_trustworthy(parser.usage)
    parser.finish()
    json.dumps(parser.body())
    assert storable(parser.response_model)
    assert storable(parser.error)


@settings(max_examples=examples(2))
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100),
                 st.integers(min_value=1, max_value=30_000).map(lambda n: "[" * n + "]" * n),
                 st.integers(min_value=1, max_value=30_000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n)))
def test_property_loads_never_raises(data):
    loads(data)
    if isinstance(data, str):
        loads(data.encode("utf-8", "surrogatepass"))


def _streams() -> list[tuple[str, Any, bytes, bytes]]:
    """(api, decoder type, stream bytes, raw bytes of the usage chunk the proxy may strip)."""
    chat, chat_usage_raw = T.openai_chat_stream()
    legacy, legacy_usage_raw = T.openai_completions_stream()
    return [
        (apis.OPENAI_CHAT, SSEDecoder, chat, chat_usage_raw),
        (apis.OPENAI_CHAT, SSEDecoder, T.openai_tool_call_stream(), b""),
        (apis.OPENAI_COMPLETIONS, SSEDecoder, legacy, legacy_usage_raw),
        (apis.OPENAI_RESPONSES, SSEDecoder, T.responses_stream(), b""),
        (apis.ANTHROPIC_MESSAGES, SSEDecoder, T.anthropic_stream(), b""),
        (apis.ANTHROPIC_MESSAGES, SSEDecoder, T.anthropic_server_tool_stream(), b""),
        (apis.GEMINI_GENERATE, SSEDecoder, T.gemini_sse(), b""),
        (apis.GEMINI_GENERATE, JSONArrayDecoder, T.gemini_array(), b""),
        (apis.OLLAMA_CHAT, NDJSONDecoder, T.ollama_chat_lines(), b""),
    ]


STREAMS = _streams()
HOSTILE_EVENTS = [
    b'data: {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": NaN, "completion_tokens": 1e400}}\n\n',
    b"data: " + b"[" * 30_000 + b"]" * 30_000 + b"\n\n",
    b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": -5}}\n\n',
    b'data: {"model": "\\ud800", "usageMetadata": {"promptTokenCount": "abc"}}\n\n',
    b'{"done": true, "prompt_eval_count": 1e400, "eval_count": -1}\n',
    b"data: \xff\xfe\xed\xa0\x80\n\n",
]


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _flatten(outputs: list[bytes | list[bytes]]) -> bytes:
    return b"".join(b"".join(o) if isinstance(o, list) else o for o in outputs)


@settings(max_examples=examples(1))
@given(st.sampled_from(STREAMS), st.booleans(), st.lists(st.integers(min_value=0), max_size=20),
       st.lists(st.tuples(st.integers(min_value=0), st.one_of(st.sampled_from(HOSTILE_EVENTS),
                                                               st.binary(max_size=40).map(lambda b: b + b"\n\n"))),
                max_size=3),
       st.sampled_from([64, 1024, 16 * 1024 * 1024]))
def test_property_stream_meter_passes_every_byte_and_never_raises(stream, strip, cuts, insertions, max_event):
    api, decoder_type, data, usage_raw = stream
    strip = strip and bool(usage_raw)
    # Hostile events go in at event boundaries (between whole events), where an upstream would put them.
    boundary = b"\n" if decoder_type is NDJSONDecoder else b"\n\n"
    pieces = data.split(boundary)
    for position, extra in insertions:
        index = position % len(pieces)
        pieces.insert(index, extra.removesuffix(boundary) if index < len(pieces) - 1 else extra)
    hostile = boundary.join(pieces)
    meter = StreamMeter(stream_parser(api, strip_usage_chunk=strip), decoder_type(max_event_bytes=max_event),
                        strip=strip)
    chunks = _chunked(hostile, cuts)
    outputs = [meter(chunk) for chunk in chunks] + [meter(b"")]
    if strip:
        # Only the injected usage chunk may go, and only if metering had not given up before it.
        assert _flatten(outputs) in (hostile.replace(usage_raw, b"", 1), hostile)
        # Never b"" before the end: mitmproxy would take an empty chunk for the end of the body.
        assert all(all(o) if isinstance(o, list) else o for o in outputs[:-1])
    else:
        assert all(out is chunk for out, chunk in zip(outputs, chunks))
        assert _flatten(outputs) == hostile
    assert meter.ended
    assert_trustworthy(meter.parser.usage)
    assert storable(meter.parser.response_model)
    json.dumps(meter.parser.body())


@settings(max_examples=examples(1))
@given(st.sampled_from([SSEDecoder, NDJSONDecoder, JSONArrayDecoder]), st.sampled_from(STREAM_APIS),
       st.booleans(), st.lists(st.binary(max_size=64), max_size=12), st.sampled_from([16, 16 * 1024 * 1024]))
def test_property_stream_meter_on_random_bytes(decoder_type, api, strip, chunks, max_event):
    meter = StreamMeter(stream_parser(api, strip_usage_chunk=strip), decoder_type(max_event_bytes=max_event),
                        strip=strip)
    outputs = [meter(chunk) for chunk in chunks if chunk] + [meter(b"")]
    assert _flatten(outputs) == b"".join(chunks)
    assert_trustworthy(meter.parser.usage)
    json.dumps(meter.parser.body())


@pytest.mark.parametrize(("api", "body"), [
    ("openai-chat", {"usage": {"prompt_tokens": 100, "completion_tokens": 5,
                               "prompt_tokens_details": {"cached_tokens": "abc"}}}),
    ("openai-responses", {"usage": {"input_tokens": 100, "output_tokens": 5,
                                    "input_tokens_details": {"cached_tokens": -3}}}),
    ("gemini-generate", {"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 5,
                                           "cachedContentTokenCount": 1.5}}),
])
def test_a_garbled_cache_part_makes_input_unknown_not_uncached(api: str, body: dict) -> None:
    """A cache part the provider sent but garbled is not "not reported" (priced as 0): the input
    side is unknown, so the cost is NULL rather than a full-price guess."""
    usage, _ = json_usage(api, body)
    assert usage.input_tokens is None and usage.output_tokens == 5


def test_each_stream_format_knows_when_it_is_complete() -> None:
    """A client that hangs up after the end marker lost nothing (issue 8, item 15)."""
    cases = [
        (apis.OPENAI_CHAT, ['{"choices":[{"delta":{"content":"x"}}]}', "[DONE]"]),
        (apis.OPENAI_RESPONSES, ['{"type":"response.completed","response":{"usage":{"input_tokens":1}}}']),
        (apis.ANTHROPIC_MESSAGES, ['{"type":"message_start","message":{"usage":{"input_tokens":1}}}',
                                   '{"type":"message_stop"}']),
        (apis.GEMINI_GENERATE, ['{"candidates":[{"finishReason":"STOP"}]}']),
        (apis.OLLAMA_CHAT, ['{"done":true,"prompt_eval_count":1,"eval_count":2}']),
    ]
    for api, events in cases:
        parser = stream_parser(api)
        for event in events[:-1]:
            parser.on_event(None, event)
        assert not parser.complete, api
        parser.on_event(None, events[-1])
        assert parser.complete, api


@pytest.mark.parametrize(("api", "body", "tier"), [
    (apis.OPENAI_CHAT, {"service_tier": "flex", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, "flex"),
    (apis.OPENAI_RESPONSES, {"service_tier": "Priority", "usage": {"input_tokens": 1}}, "priority"),
    (apis.ANTHROPIC_MESSAGES, {"usage": {"input_tokens": 1, "service_tier": "standard"}}, "standard"),
    (apis.OPENAI_CHAT, {"service_tier": "x\ud800'; drop", "usage": {"prompt_tokens": 1}}, None),
])
def test_the_service_tier_the_provider_reports_is_kept_for_pricing(api: str, body: dict, tier: str | None) -> None:
    assert json_usage(api, body)[0].service_tier == tier
