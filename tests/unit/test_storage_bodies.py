"""Bodies stored as parts by hash: split and rebuild give back the exact text, in Python and in SQL.

The property: for any JSON value, serialised any way a client might (separators,
indentation, escapes, number spellings), joining the split back gives the same
text, character for character. The SQLite view does the same join in SQL.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.storage import agent_session, records
from llm_proxy.record import COLUMNS
from llm_proxy.storage import bodies
from llm_proxy.storage.bodies import (
    MARKER,
    KnownParts,
    PartCache,
    part_hash,
    prepare,
    read_body,
    rebuild,
    reference,
    split,
    store_text,
)
from llm_proxy.storage.rows import row_values
from llm_proxy.storage.sqlite import SqliteSink

# JSON values with what exactness is about: unicode (astral, escapes), 1.0 vs 1, big ints, nesting.
scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)
KEYS = ["messages", "input", "contents", "tools", "system", "model", "other", "instructions"]
bodies_st = st.lists(st.tuples(st.sampled_from(KEYS), values | st.lists(values, max_size=5)), max_size=8)


def dumps(pairs: list[tuple[str, object]], style: int) -> str:
    """An object's text with keys in the given order (duplicates too), in one of several styles."""
    if style == 0:
        return "{" + ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")) for k, v in pairs) + "}"
    if style == 1:
        return "{ " + " ,\n ".join(json.dumps(k) + " : " + json.dumps(v, indent=2) for k, v in pairs) + " }"
    if style == 2:
        return "\t{" + ",".join(json.dumps(k, ensure_ascii=False) + ":\r\n" + json.dumps(v, ensure_ascii=False)
                                for k, v in pairs) + "}\n"
    # style 3: numbers spelled as clients spell them, which Python's json would not reproduce
    text = "{" + ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in pairs) + "}"
    return text.replace("0.5", "5e-1").replace(":1,", ":1.0,")


def join(segments: list[str], parts: dict[bytes, str]) -> str | None:
    return rebuild(segments, {h.hex(): d for h, d in parts.items()}.get)


@given(bodies_st, st.integers(0, 3), st.integers(0, 64))
def test_rebuild_of_split_is_the_exact_text(pairs, style, part_min) -> None:
    text = dumps(pairs, style)
    found = split(text, part_min=part_min)
    assert found is not None, text
    segments, parts = found
    assert join(segments, parts) == text
    assert all(json.loads(data) is not None or data == "null" for data in parts.values())  # each part is JSON
    for digest, data in parts.items():
        assert part_hash(data) == digest


@settings(max_examples=30)
@given(st.lists(bodies_st, min_size=1, max_size=4), st.integers(0, 3))
def test_recognising_known_parts_changes_nothing(conversation, style) -> None:
    """A growing conversation split with the memory of earlier parts, and without: the same."""
    known = KnownParts(max_chars=4096)
    grown: list[tuple[str, object]] = []
    for pairs in conversation:
        grown = grown + pairs
        for text in (dumps(grown, style), dumps(list(reversed(grown)), style)):
            assert split(text, part_min=0, known=known) == split(text, part_min=0)


def test_a_known_part_inside_another_value_is_not_mistaken_for_it() -> None:
    turn = json.dumps({"role": "user", "content": "x" * 200})
    known = KnownParts()
    first = json.dumps({"messages": [json.loads(turn)]})
    split(first, known=known)
    for text in (json.dumps({"messages": [turn]}),  # the same characters, as a string
                 json.dumps({"messages": [[json.loads(turn)]]}),  # nested one level deeper
                 json.dumps({"messages": [{**json.loads(turn), "more": 1}]})):  # the same opening, longer
        assert split(text, known=known) == split(text)
        assert join(*split(text, known=known)) == text  # type: ignore[misc]


@given(values, st.integers(0, 3))
def test_any_json_text_stored_and_read_back_exactly(value, style) -> None:
    text = dumps([("messages", [value, value]), ("tools", value)], style) if style else json.dumps(value)
    parts: dict[bytes, str] = {}
    stored = store_text(text, parts, split_min=0)
    if stored != text:  # not an object: kept as it is
        back = read_body(json.loads(stored), {h.hex(): d for h, d in parts.items()}.get)
        assert back == text


@given(st.text(max_size=300))
def test_split_refuses_what_is_not_one_json_object(text) -> None:
    found = split(text, part_min=0)
    if found is not None:  # then it is a JSON object, and rebuilds exactly
        assert isinstance(json.loads(text), dict)
        assert join(*found) == text


def test_exact_numbers_unicode_and_duplicate_keys() -> None:
    text = ('{"model":"m","messages":[{"n":1.0,"big":123456789012345678901234567890,"e":1E+2,"s":"\\ud83d\\ude00 ☃"},'
            '{"n":1}],"messages":[{"again":true}],"tools":[{"x":-0.0}]}')
    segments, parts = split(text, part_min=0)  # type: ignore[misc]
    assert len(segments) == 9 and join(segments, parts) == text


def test_parts_are_shared_across_a_growing_conversation() -> None:
    session = list(agent_session(6))
    cache, today = PartCache(), date(2026, 11, 30)
    sent = []
    for request, response in session:
        row = row_values(records([(request, response)])[0], body_max_bytes=None)
        batch = prepare([row], [COLUMNS.index("request_body")], cache, today)
        sent.append(batch.parts)
        cache.stored(batch.parts, today)
        reference_doc = json.loads(batch.rows[0][COLUMNS.index("request_body")])
        assert reference_doc[0] == MARKER
    assert len(sent[0]) == 3  # system, tools, the first user message
    assert all(len(p) == 2 for p in sent[1:])  # then only the two new turns of each call
    assert not prepare([row], [COLUMNS.index("request_body")], cache, today).parts  # all known today
    tomorrow = today + timedelta(days=1)
    assert len(prepare([row], [COLUMNS.index("request_body")], cache, tomorrow).parts) == 13  # `seen` raised daily


def test_small_bodies_stay_plain_and_reference_look_alikes_are_wrapped() -> None:
    assert store_text('{"model":"m","messages":[]}', {}) == '{"model":"m","messages":[]}'
    fake = json.dumps([MARKER, "{", "0" * 32, "}"])  # a client's body pretending to be a reference
    stored = store_text(fake, {})
    assert stored != fake and read_body(json.loads(stored), lambda h: "LEAK") == fake
    assert store_text(f'{{"x": "{MARKER}"', {}) == f'{{"x": "{MARKER}"'  # not JSON: left for jsonb to refuse
    assert read_body({"plain": 1}, lambda h: None) == {"plain": 1}
    assert read_body(reference(["{", "ab", "}"]), lambda h: None) is None  # a part gone: no half body


def test_invalid_json_is_left_alone() -> None:
    text = '{"messages": [' + '"x",' * 1000 + "]"
    assert split(text) is None and store_text(text, {}) == text


def test_cache_is_bounded() -> None:
    cache, today = PartCache(capacity=3), date(2026, 1, 1)
    cache.stored([bytes([i]) for i in range(5)], today)
    assert [cache.fresh(bytes([i]), today) for i in range(5)] == [False, False, True, True, True]


# --- SQLite: the sink writes parts, the view rebuilds -----------------------------------------------

def test_sqlite_view_reads_back_exact_bodies_stored_once(tmp_path) -> None:
    session = list(agent_session(8))
    sink = SqliteSink(str(tmp_path / "x.db"), "llm_requests")
    sink.connect()
    rows = [row_values(r, body_max_bytes=None) for r in records(session)]
    for row in rows[:4]:
        sink.write([row])
    sink.write(rows[4:])
    sink.write(rows[2:3], replay=True)  # a replay: no duplicate row, no harm to the parts
    sink.close()
    conn = sqlite3.connect(tmp_path / "x.db")
    back = conn.execute("SELECT request_body, response_body FROM llm_requests_full ORDER BY id").fetchall()
    raw = conn.execute("SELECT sum(length(request_body)) FROM llm_requests").fetchone()[0]
    parts = conn.execute("SELECT count(*), sum(length(data)) FROM llm_requests_bodies").fetchone()
    assert back == [(a.decode(), b.decode()) for a, b in session]
    assert parts[0] == 3 + 2 * 7  # system, tools, first message, then two turns per call
    assert raw + parts[1] < 0.25 * sum(len(a) for a, _ in session)
    conn.close()


@settings(max_examples=20)
@given(st.lists(st.tuples(bodies_st, st.integers(0, 3)), min_size=1, max_size=3))
def test_sqlite_view_rebuilds_any_stored_body_exactly(cases) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sink = SqliteSink(f"{tmp}/x.db", "t")
        sink.connect()
        saved = bodies.SPLIT_MIN_CHARS
        bodies.SPLIT_MIN_CHARS = 0
        try:
            rows = [row_values(r, body_max_bytes=None) for r in records(
                [(dumps(pairs, style).encode(), b"{}") for pairs, style in cases])]
            sink.write(rows)
        finally:
            bodies.SPLIT_MIN_CHARS = saved
            sink.close()
        conn = sqlite3.connect(f"{tmp}/x.db")
        back = [r[0] for r in conn.execute("SELECT request_body FROM t_full ORDER BY id")]
        conn.close()
    assert back == [row[COLUMNS.index("request_body")] for row in rows]  # the text as cleaned for storage


def test_sqlite_view_of_a_missing_part_is_null_not_a_broken_body(tmp_path) -> None:
    session = list(agent_session(2))
    sink = SqliteSink(str(tmp_path / "x.db"), "t")
    sink.connect()
    for record in records(session):
        sink.write([row_values(record, body_max_bytes=None)])
    sink.close()
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("DELETE FROM t_bodies WHERE rowid = (SELECT max(rowid) FROM t_bodies)")  # a turn of call 2
    assert [r[0] is None for r in conn.execute("SELECT request_body FROM t_full ORDER BY id")] == [False, True]
    conn.close()


def test_split_threshold_is_read_at_call_time(monkeypatch) -> None:
    text = json.dumps({"messages": ["x" * 200]})
    monkeypatch.setattr(bodies, "SPLIT_MIN_CHARS", 10)
    assert json.loads(store_text(text, {}))[0] == MARKER
    monkeypatch.setattr(bodies, "SPLIT_MIN_CHARS", 10**6)
    assert store_text(text, {}) == text


def test_records_helper_times_are_utc() -> None:
    assert records(list(agent_session(1)), datetime(2026, 1, 1, tzinfo=UTC))[0].ts.tzinfo is UTC
