"""Which rows answer a usage window: whole UTC days from the daily rollup, whole hours
from the hourly one, the minutes at the edges from the rows themselves.

A partial hour (or day) at an edge is answered whichever way reads less: the part
inside the window from the finer level (+), or the whole unit from the coarser level
minus the part outside the window from the finer one (-). Both parts of that choice
fall in the same hour or day, so every group (day and hour buckets included) gets
exactly the sum of its rows. Time after `now` counts as empty: a window ending now
takes the current hour from the rollup and subtracts the (normally no) rows after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
UNITS = {"hourly": HOUR, "daily": DAY}


@dataclass(frozen=True, slots=True)
class Piece:
    source: str  # "raw", "hourly" or "daily"
    lo: datetime
    hi: datetime
    sign: int  # +1 add, -1 subtract


def floor(moment: datetime, unit: timedelta) -> datetime:
    if unit == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil(moment: datetime, unit: timedelta) -> datetime:
    low = floor(moment, unit)
    return low if low == moment else low + unit


def plan(since: datetime, until: datetime, now: datetime, levels: tuple[str, ...]) -> list[Piece]:
    """Pieces whose signed sums add up to the rows in [since, until); `levels` are the rollups
    usable for this report, finest first ("hourly", then "daily"), or () for the rows alone."""
    sources = ("raw", *levels)
    pieces: list[Piece] = []

    def weight(lo: datetime, hi: datetime) -> timedelta:
        return max(min(hi, now) - lo, timedelta(0))

    def cover(lo: datetime, hi: datetime, level: int, sign: int) -> None:
        if lo >= hi:
            return
        if level == 0:
            pieces.append(Piece("raw", lo, hi, sign))
            return
        source = sources[level]
        unit = UNITS[source]
        first, last = ceil(lo, unit), floor(hi, unit)
        if first > last:  # inside one unit
            cover(lo, hi, level - 1, sign)
            return
        start, end, edges = first, last, []
        if lo < first:
            if weight(first - unit, lo) < weight(lo, first):
                start = first - unit
                edges.append((first - unit, lo, -sign))
            else:
                edges.append((lo, first, sign))
        if hi > last:
            if weight(hi, last + unit) < weight(last, hi):
                end = last + unit
                edges.append((hi, last + unit, -sign))
            else:
                edges.append((last, hi, sign))
        if start < end:
            pieces.append(Piece(source, start, end, sign))
        for a, b, s in edges:
            cover(a, b, level - 1, s)

    cover(since, until, len(sources) - 1, 1)
    return pieces
