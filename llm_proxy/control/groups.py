"""Turning grouped sums into the usage API's totals and sorted JSON groups, fast enough for
tens of thousands of groups, and keeping the sums of closed days ready for the next report.

A `Part` holds the grouped rows of some pieces of a window with each group already
written as JSON and sorted. A report over 30 days is then the kept part of its closed
days (ClosedDays) plus a small part read now (today's rollup rows and the edges):
only the groups the small part touches are added up and written again; the others are
reused as they are, so a 30,000-group report costs a sort of nearly sorted keys and a
join, not 30,000 dicts.
"""

from __future__ import annotations

import json
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_usd", "unpriced")
COUNTS = tuple(m for m in MEASURES if m != "cost_usd")


def money(value: Decimal | None) -> str:
    """Exact decimal text without exponent or trailing zeros: Decimal('3.6780E-4') -> '0.0003678'."""
    if value is None:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _day(value: Any) -> str:
    # PostgreSQL gives a timestamp; SQLite the text prefix of ts ("2026-11-23", "2026-11-23T10").
    return value.strftime("%Y-%m-%d") if isinstance(value, datetime) else value[:10]


def _hour(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:00Z") if isinstance(value, datetime) else value[:13] + ":00Z"


_FORMATS: dict[str, Callable[[Any], Any]] = {"day": _day, "hour": _hour, "status": int}


_TEXT = json.encoder.encode_basestring  # type: ignore[attr-defined]  # JSON string, as dumps(ensure_ascii=False)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    return _TEXT(value) if isinstance(value, str) else str(int(value))


class Part:
    """Grouped sums (rows with the group_by fields, the counts and cost_usd as Decimal)."""

    def __init__(self, rows: list[dict[str, Any]], group_by: tuple[str, ...]) -> None:
        self.group_by = group_by
        self.sums: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            key = tuple(row[f] for f in group_by)
            values = [int(row[m] or 0) for m in COUNTS] + [row["cost_usd"]]
            found = self.sums.get(key)
            if found is None:
                self.sums[key] = values
            else:
                self.sums[key] = [a + b for a, b in zip(found, values)]
        self.totals = [sum(column) for column in zip(*self.sums.values())] if self.sums else [0] * 8 + [Decimal(0)]
        self._written: list[tuple[tuple[Any, ...], tuple[Any, ...], str]] | None = None
        self.odd = False  # a SQLite rollup cost that did not fit: not to be used
        self._index: dict[tuple[Any, ...], int] | None = None

    def written(self) -> list[tuple[tuple[Any, ...], tuple[Any, ...], str]]:
        """(sort key, group key, JSON text) of every group with calls, sorted; made once."""
        if self._written is None:
            self._written = sorted((self._write(key, values) for key, values in self.sums.items() if values[0]),
                                   key=lambda item: item[0])
        return self._written

    def index(self) -> tuple[dict[tuple[Any, ...], int], list[tuple[Any, ...]], list[str]]:
        """Position of each group in written(), the sort keys and the texts, in that order."""
        written = self.written()
        if self._index is None:
            self._orders = [item[0] for item in written]
            self._texts = [item[2] for item in written]
            self._index = {item[1]: i for i, item in enumerate(written)}
            self._written = []  # the same, held by the three above (a kept part is read only through them)
        return self._index, self._orders, self._texts

    def _write(self, key: tuple[Any, ...], values: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...], str]:
        shown = [_FORMATS[f](v) if v is not None and f in _FORMATS else v for f, v in zip(self.group_by, key)]
        fields = [f"{_TEXT(f)}: {_value(v)}" for f, v in zip(self.group_by, shown)]
        fields += [f'"{name}": {value}' for name, value in zip(COUNTS[:-1], values[:-2])]
        fields.append(f'"cost_usd": "{money(values[-1])}", "unpriced": {values[-2]}')
        order = (-values[-1], *[(v is None, v) for v in shown])
        return order, key, "{" + ", ".join(fields) + "}"


def answer(head: dict[str, Any], kept: Part | None, fresh: Part) -> bytes:
    """The usage API's JSON: `kept` (sums of closed days, written before) plus `fresh`."""
    totals = fresh.totals if kept is None else [a + b for a, b in zip(kept.totals, fresh.totals)]
    shown = {name: int(value) for name, value in zip(COUNTS, totals[:-1])}
    totals_json = {m: (money(totals[-1]) if m == "cost_usd" else shown[m]) for m in MEASURES}
    if not fresh.group_by:
        groups: list[str] = []
    elif kept is None:
        groups = [text for _, _, text in fresh.written()]
    else:
        changed = Part([], fresh.group_by)
        for key, values in fresh.sums.items():
            before = kept.sums.get(key)
            changed.sums[key] = values if before is None else [a + b for a, b in zip(before, values)]
        # The kept groups stay in their order; each changed group goes where its sort key says.
        index, orders, texts = kept.index()
        out: list[str | None] = list(texts)
        for key in changed.sums:
            if key in index:
                out[index[key]] = None
        inserts = [(bisect_left(orders, item[0]), item[2]) for item in changed.written()]
        groups = []
        start = 0
        for position, text in inserts:  # ascending: changed.written() is sorted
            groups.extend(t for t in out[start:position] if t is not None)
            groups.append(text)
            start = position
        groups.extend(t for t in out[start:] if t is not None)
    text = json.dumps({**head, "totals": totals_json}, ensure_ascii=False)
    return (text[:-1] + ', "groups": [' + ", ".join(groups) + "]}").encode()


class ClosedDays:
    """Parts of whole days that ended CLOSED_AFTER ago, per report shape, shared by every worker
    thread of one control plane; each is used only while the rollups' generation counter is
    the one read before it was summed (a late, changed or deleted row bumps it)."""

    def __init__(self, entries: int = 8) -> None:  # a 30,000-group part holds about 25 MB
        self._entries = entries
        self._lock = threading.Lock()
        self._parts: OrderedDict[tuple[Any, ...], tuple[int, Part]] = OrderedDict()

    def get(self, key: tuple[Any, ...], generation: int) -> Part | None:
        with self._lock:
            found = self._parts.get(key)
            if found is None or found[0] != generation:
                return None
            self._parts.move_to_end(key)
            return found[1]

    def put(self, key: tuple[Any, ...], generation: int, part: Part) -> None:
        with self._lock:
            self._parts[key] = (generation, part)
            self._parts.move_to_end(key)
            while len(self._parts) > self._entries:
                self._parts.popitem(last=False)
