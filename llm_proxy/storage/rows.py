"""Turning a Record into column values: JSON serialisation, the body size cap, storable text.

Runs in the writer thread: json.dumps of large bodies is the costliest step
of a row and must not run on the proxy's event loop.

Every row must be storable, whatever a client or provider sent: a request
path decoded with surrogateescape, a model name with a lone surrogate, a body
with a NUL or an unpaired surrogate escape. PostgreSQL's text refuses NUL,
its jsonb refuses `\\u0000` and unpaired `\\ud800`-`\\udfff` escapes, and no
UTF-8 encoder (COPY, SQLite, the journal) takes a lone surrogate. Such
characters are replaced by U+FFFD, and the row says so in its `error` column
(`REPLACED_NOTE` + the columns), so a replaced character is never mistaken for
what the client sent. JSON numbers jsonb cannot hold (NaN, Infinity, which
Python's json accepts) become null, with the same note.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from ..record import COLUMNS, JSON_COLUMNS, Record

TRUNCATED_HEAD = 4096
REPLACEMENT = "\ufffd"
REPLACED_NOTE = "llm-proxy replaced what the database cannot store in: "

_ERROR = COLUMNS.index("error")
_JSON_INDEXES = frozenset(COLUMNS.index(c) for c in JSON_COLUMNS)
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
# A quick, literal-prefixed search first: most texts have no such escape and pay only this.
_MAYBE_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# \u0000, or a surrogate escape that is not a high+low pair. The lead-in keeps backslash
# parity: in `\\u0000` the backslash is escaped, and the text is not an escape.
_BAD_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)"
    r"(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2}))"
)


def _escape_fix(match: re.Match[str]) -> str:
    lead, escape = match.group(1), match.group(2)
    return match.group(0) if len(escape) == 12 else lead + "\\ufffd"  # a well-formed pair stays


def clean_text(text: str) -> tuple[str, bool]:
    """`text` with NUL and lone surrogates replaced by U+FFFD; True if anything was replaced."""
    if text.isascii():
        if "\x00" not in text:
            return text, False
        return text.replace("\x00", REPLACEMENT), True
    if _BAD_CHARS.search(text) is None:
        return text, False
    return _BAD_CHARS.sub(REPLACEMENT, text), True


def clean_json(text: str) -> tuple[str, bool]:
    """JSON text jsonb accepts: clean_text, and the escapes jsonb refuses replaced by \\ufffd."""
    text, changed = clean_text(text)
    if "\\u" in text and _MAYBE_BAD_ESCAPE.search(text) is not None:
        fixed = _BAD_ESCAPE.sub(_escape_fix, text)
        if fixed != text:
            return fixed, True
    return text, changed


def _json_text(value: Any, max_bytes: int | None) -> tuple[str | None, bool]:
    if value is None:
        return None, False
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            # JSON in UTF-16/32 (json.loads detects them): store the same value in UTF-8.
            try:
                text = json.dumps(json.loads(value), ensure_ascii=False, separators=(",", ":"))
            except (ValueError, UnicodeDecodeError):
                return json.dumps({"non_json_bytes": len(value)}), True
        text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark: json.loads allows it, jsonb does not
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    text, changed = clean_json(text)
    if "NaN" in text or "Infinity" in text:
        text, constants = _without_constants(text)
        changed = changed or constants
    # Characters are at most 4 bytes: only encode when the text could be over the cap.
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode())
        if size > max_bytes:
            return json.dumps({"truncated": True, "size_bytes": size, "head": text[:TRUNCATED_HEAD]}), changed
    return text, changed


def _without_constants(text: str) -> tuple[str, bool]:
    """NaN, Infinity and -Infinity (Python's json reads and writes them; jsonb refuses them) as null.
    Only texts that mention them pay for this parse, and most of those have them in a string."""
    found: list[str] = []

    def constant(name: str) -> None:
        found.append(name)

    def number(literal: str) -> float | None:
        value = float(literal)
        if math.isfinite(value):
            return value
        found.append(literal)  # 1e400: fine as text, but re-serialised here it would be Infinity
        return None

    try:
        value = json.loads(text, parse_constant=constant, parse_float=number)
    except ValueError:
        return text, False
    if not found:
        return text, False
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), True


def to_json(value: Any, max_bytes: int | None) -> str | None:
    """JSON text for a jsonb column, or a truncation marker when over `max_bytes`.

    `value` is a Python object, or JSON text already (the bytes of a body that
    parsed as JSON), which is stored as it came, saving a serialisation.
    """
    return _json_text(value, max_bytes)[0]


def _with_note(values: list[Any], replaced: list[str]) -> list[Any]:
    if replaced:
        note = REPLACED_NOTE + ", ".join(replaced)
        error = values[_ERROR]
        values[_ERROR] = f"{error}; {note}" if error else note
    return values


def row_values(record: Record, *, body_max_bytes: int | None) -> list[Any]:
    """The record's values in COLUMNS order, JSON columns as text (bodies capped), all storable."""
    values: list[Any] = []
    replaced: list[str] = []
    for column in COLUMNS:
        value = getattr(record, column)
        changed = False
        if column in JSON_COLUMNS:
            value, changed = _json_text(value, None if column == "attempts" else body_max_bytes)
        elif isinstance(value, str):
            value, changed = clean_text(value)
        if changed:
            replaced.append(column)
        values.append(value)
    return _with_note(values, replaced)


def clean_row(row: Sequence[Any]) -> list[Any]:
    """A row from elsewhere (a journal line) made storable the same way as row_values."""
    values = list(row)
    replaced: list[str] = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            values[index], changed = (clean_json if index in _JSON_INDEXES else clean_text)(value)
            if changed:
                replaced.append(COLUMNS[index])
    return _with_note(values, replaced)
