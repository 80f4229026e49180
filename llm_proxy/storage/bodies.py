"""Bodies stored once: a large body is split into parts kept by hash, the row keeps a reference.

Coding agents resend the whole conversation on every call: the system prompt,
the tools and every earlier message again. Stored verbatim, a 50-call session
writes the same megabytes 50 times. Here a body of at least SPLIT_MIN_CHARS is
cut, at exact character offsets of its JSON text, into:

- parts: each element of a top-level `messages` / `input` / `contents` array
  and the whole value of `tools` / `system` / `instructions` / ... when at
  least PART_MIN_CHARS long, stored once in `<table>_bodies` under a 16-byte
  BLAKE2b hash of its text;
- a reference document kept in the row's jsonb column:
  `["llm-body/1", literal, hash, literal, hash, ..., literal]`, where the
  literals are the exact text between the parts.

Joining the literals and the parts' texts in order gives back the exact text
that arrived (key order, whitespace, 1.0 vs 1, big numbers, escapes): the
view `<table>_full` does it in SQL, `rebuild` in Python. Smaller bodies stay
plain jsonb as before.

Runs in the writer thread only (hashing and scanning cost ~1 ms per 150 KB).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

MARKER = "llm-body/1"
SPLIT_MIN_CHARS = 2048  # smaller bodies stay plain jsonb: nothing worth sharing, readable as they were
PART_MIN_CHARS = 128  # a reference costs ~40 bytes per row: smaller values stay in the literal
ARRAY_KEYS = frozenset({"messages", "input", "contents"})  # conversation turns: one part per element
WHOLE_KEYS = frozenset({"tools", "system", "instructions", "systemInstruction", "system_instruction", "functions",
                        "tool_config", "toolConfig"})

_WS = re.compile(r"[ \t\n\r]*")
_scan = json.JSONDecoder().scan_once  # the C scanner: the end of a JSON value at an offset


def part_hash(text: str) -> bytes:
    """16 bytes of BLAKE2b over the part's UTF-8 text: collisions are out of reach (2^64 work)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _NotSplittable(Exception):
    pass


def _ws(text: str, index: int) -> int:
    return _WS.match(text, index).end()  # type: ignore[union-attr]  # matches the empty string at worst


def _value_end(text: str, index: int) -> int:
    try:
        _, end = _scan(text, index)
    except StopIteration as e:
        raise _NotSplittable from e
    return end


def _expect(text: str, index: int, chars: str) -> str:
    if index >= len(text) or text[index] not in chars:
        raise _NotSplittable
    return text[index]


class KnownParts:
    """Texts of recently split parts, to recognise them when a conversation is sent again.

    An agent's next call resends every earlier turn verbatim: a turn already seen is then
    recognised by a comparison of its text (C speed) instead of a JSON scan and a hash, which
    cost ~2 ms per 150 KB body. The turn that followed a part last time is tried first, then
    parts by their first PROBE characters. Only parts that open with `{`, `[` or `"` are kept:
    such a value ends exactly where its text ends, so the same text at the same place is the
    same, valid, value. Bounded in characters."""

    PROBE = 96

    def __init__(self, max_chars: int = 16 << 20) -> None:
        self.max_chars = max_chars
        self._chars = 0
        self._by_head: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._by_digest: dict[bytes, str] = {}  # the same texts (kept and evicted together)
        self._next: dict[bytes, bytes] = {}  # a part's hash -> the hash of the part after it, last time

    def match(self, text: str, index: int, previous: bytes | None) -> tuple[int, bytes, str] | None:
        if previous is not None:
            following = self._next.get(previous)
            data = self._by_digest.get(following) if following is not None else None
            if data is not None and following is not None and text.startswith(data, index):
                return index + len(data), following, data
        found = self._by_head.get(text[index:index + self.PROBE])
        if found is None or not text.startswith(found[0], index):
            return None
        return index + len(found[0]), found[1], found[0]

    def add(self, data: str, digest: bytes, previous: bytes | None) -> None:
        if len(data) < self.PROBE or data[0] not in '{["' or len(data) > self.max_chars // 4:
            return
        if previous is not None:
            self._next[previous] = digest
        head = data[:self.PROBE]
        old = self._by_head.pop(head, None)
        if old is not None:
            self._forget(old)
        self._by_head[head] = (data, digest)
        self._by_digest[digest] = data
        self._chars += len(data)
        while self._chars > self.max_chars:
            self._forget(self._by_head.popitem(last=False)[1])
        if len(self._next) > 4 * len(self._by_head) + 1024:
            self._next.clear()  # successors of forgotten parts: found again by their heads

    def _forget(self, entry: tuple[str, bytes]) -> None:
        self._chars -= len(entry[0])
        if self._by_digest.get(entry[1]) is entry[0]:
            del self._by_digest[entry[1]]


def split(text: str, *, part_min: int = PART_MIN_CHARS, known: KnownParts | None = None
          ) -> tuple[list[str], dict[bytes, str]] | None:
    """`text` (a JSON object's text) as [literal, hash-hex, literal, ..., literal] and the parts by
    hash; None when it is not an object with anything to share (or not valid JSON at all)."""
    segments: list[str] = []
    parts: dict[bytes, str] = {}
    start = 0  # where the current literal begins

    previous: bytes | None = None  # the part before, in the array being split

    def part(a: int, b: int, digest: bytes | None = None, data: str | None = None) -> None:
        nonlocal start, previous
        if b - a < part_min:
            previous = None
            return
        if data is None or digest is None:
            data = text[a:b]
            digest = part_hash(data)
            if known is not None:
                known.add(data, digest, previous)
        parts[digest] = data
        segments.append(text[start:a])
        segments.append(digest.hex())
        start = b
        previous = digest

    def value(a: int, keep: bool) -> int:
        """The end of the value at `a`, made a part when `keep` (and long enough)."""
        if keep and known is not None and (seen := known.match(text, a, previous)) is not None:
            part(a, *seen)
            return seen[0]
        end = _value_end(text, a)
        if keep:
            part(a, end)
        return end

    try:
        i = _ws(text, 0)
        _expect(text, i, "{")
        i = _ws(text, i + 1)
        if _expect(text, i, '"}') == '"':
            while True:
                key, i = _scan(text, i)
                i = _ws(text, i)
                _expect(text, i, ":")
                i = _ws(text, i + 1)
                previous = None
                if key in ARRAY_KEYS and i < len(text) and text[i] == "[":
                    i = _ws(text, i + 1)
                    if i < len(text) and text[i] != "]":
                        while True:
                            i = _ws(text, value(i, True))
                            if _expect(text, i, ",]") == "]":
                                break
                            i = _ws(text, i + 1)
                    _expect(text, i, "]")
                    i += 1
                else:
                    i = value(i, key in WHOLE_KEYS)
                i = _ws(text, i)
                if _expect(text, i, ",}") == "}":
                    break
                i = _ws(text, i + 1)
                _expect(text, i, '"')
        if _ws(text, i + 1) != len(text):
            return None  # trailing text: not one JSON value
    except (_NotSplittable, StopIteration, ValueError, RecursionError):
        return None
    segments.append(text[start:])
    return segments, parts


def rebuild(segments: list[str], part: Callable[[str], str | None]) -> str | None:
    """The exact text again: literals and parts (looked up by hash hex) in order; None if a part is gone."""
    out: list[str] = []
    for index, segment in enumerate(segments):
        if index % 2:
            data = part(segment)
            if data is None:
                return None
            out.append(data)
        else:
            out.append(segment)
    return "".join(out)


def reference(segments: list[str]) -> str:
    """The reference document's JSON text, as the row stores it."""
    return json.dumps([MARKER, *segments], ensure_ascii=False, separators=(",", ":"))


def is_reference(value: Any) -> bool:
    """A decoded column value that is a reference document (not a body)."""
    return isinstance(value, list) and len(value) % 2 == 0 and bool(value) and value[0] == MARKER


def read_body(value: Any, part: Callable[[str], str | None]) -> Any:
    """A stored body column (jsonb decoded, or text) as the body's exact JSON text, or as it was."""
    if isinstance(value, str):
        if MARKER not in value:
            return value
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not is_reference(value):
        return value
    return rebuild(value[1:], part)


@dataclass(slots=True)
class Prepared:
    """A batch's rows with bodies replaced by references, and the parts the database may lack."""
    rows: list[list[Any]]
    parts: dict[bytes, str] = field(default_factory=dict)


class PartCache:
    """Hashes this writer already stored today, so a resent conversation sends only new turns.

    Keyed by hash, valued by the day the part's `seen` was last raised to: a part is sent again
    (raising `seen`) once a day, so retention can tell unused parts by `seen` alone."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, date] = OrderedDict()

    def fresh(self, digest: bytes, today: date) -> bool:
        day = self._seen.get(digest)
        if day is None or day < today:
            return False
        self._seen.move_to_end(digest)
        return True

    def stored(self, digests: Iterable[bytes], today: date) -> None:
        """After the transaction that sent them committed."""
        for digest in digests:
            self._seen[digest] = today
            self._seen.move_to_end(digest)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def clear(self) -> None:
        self._seen.clear()


def store_text(text: str, parts: dict[bytes, str], *, split_min: int | None = None,
               known: KnownParts | None = None) -> str:
    """The column text for a body's JSON text: a reference document, or the text itself when small.

    A small text that mentions the marker is wrapped too, so that every reference document
    in the table was made here: a client cannot send one that points at another row's parts."""
    if split_min is None:
        split_min = SPLIT_MIN_CHARS
    if len(text) < split_min and MARKER not in text:
        return text
    found = split(text, known=known) if len(text) >= split_min else None
    if found is None:
        if MARKER in text and _valid(text):
            return reference([text])  # one literal: the exact text
        return text  # not a JSON object: jsonb takes it as it is, or refuses it (a dead letter, as ever)
    segments, new = found
    parts.update(new)
    return reference(segments)


def _valid(text: str) -> bool:
    """JSON the database's json type takes (only a body that mentions the marker pays for this)."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def prepare(rows: Iterable[list[Any]], indexes: Iterable[int], cache: PartCache, today: date,
            known: KnownParts | None = None) -> Prepared:
    """Copies of `rows` with the body columns at `indexes` stored as references, and the parts
    not known to be in the database already."""
    indexes = tuple(indexes)
    out = Prepared([])
    found: dict[bytes, str] = {}
    for row in rows:
        copy = list(row)
        for index in indexes:
            value = copy[index]
            if isinstance(value, bytes):  # JSON text as bytes, should a caller pass it so
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    continue
            if isinstance(value, str):
                copy[index] = store_text(value, found, known=known)
        out.rows.append(copy)
    out.parts = {h: data for h, data in found.items() if not cache.fresh(h, today)}
    return out

