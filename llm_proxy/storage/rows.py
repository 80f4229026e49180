"""Turning a Record into column values: JSON serialisation and the body size cap.

Runs in the writer thread: json.dumps of large bodies is the costliest step
of a row and must not run on the proxy's event loop.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..record import COLUMNS, JSON_COLUMNS, Record

_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
TRUNCATED_HEAD = 4096


def to_json(value: Any, max_bytes: int | None) -> str | None:
    """JSON text for a jsonb column, or a truncation marker when over `max_bytes`.

    `value` is a Python object, or JSON text already (the bytes of a body that
    parsed as JSON), which is stored as it came, saving a serialisation.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    if "\\u0000" in text:  # PostgreSQL's jsonb refuses NUL characters
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    # Characters are at most 4 bytes: only encode when the text could be over the cap.
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode())
        if size > max_bytes:
            return json.dumps({"truncated": True, "size_bytes": size, "head": text[:TRUNCATED_HEAD]})
    return text


def row_values(record: Record, *, body_max_bytes: int | None) -> list[Any]:
    """The record's values in COLUMNS order, JSON columns as text (bodies capped)."""
    values = []
    for column in COLUMNS:
        value = getattr(record, column)
        if column in JSON_COLUMNS:
            value = to_json(value, None if column == "attempts" else body_max_bytes)
        elif isinstance(value, str) and "\x00" in value:
            value = value.replace("\x00", "\ufffd")  # PostgreSQL text refuses NUL (a model name from a client)
        values.append(value)
    return values
