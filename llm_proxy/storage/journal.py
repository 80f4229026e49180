"""The journal: rows the database could not take yet, on disk, in order.

While the database is down (or behind a backlog), the writer appends each
batch to the newest segment file and fsyncs it, so memory stays bounded
whatever the outage length and a crash loses nothing already journaled. When
the database is back, segments are replayed oldest first and deleted once
written; replays are idempotent (request_id is unique), so a segment replayed
twice after a crash does no harm. A torn last line (a kill mid-append) is
skipped on replay.

Segments are JSON lines, one object per row (column -> value), so a human or
`llm-proxy db replay` can read them. The directory is locked by the process
that owns it. Rows the database refuses outright go to `dead-letter.jsonl`
with the reason, never silently away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..paths import state_dir
from ..record import COLUMNS
from .rows import clean_row

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 16 << 20
DEAD_LETTER = "dead-letter.jsonl"
Row = Sequence[Any]  # values in COLUMNS order


def journal_dir(option: str, table: str) -> Path:
    """The `llm_journal` option, else one directory per table in the state directory."""
    return Path(option) if option else state_dir() / "journal" / table


class JournalLocked(Exception):
    """Another process owns this journal directory."""


def encode_row(row: Row) -> str:
    return json.dumps(dict(zip(COLUMNS, row)), default=str, ensure_ascii=False, separators=(",", ":"))


def encode_line(text: str) -> bytes:
    """UTF-8 that never fails: a lone surrogate (only ever inside a JSON string here) becomes
    its JSON escape, so the line still reads back as the same value."""
    return text.encode("utf-8", "backslashreplace")


def decode_row(line: str) -> list[Any]:
    data = json.loads(line)
    values = [data.get(column) for column in COLUMNS]
    ts, cost = COLUMNS.index("ts"), COLUMNS.index("cost_usd")
    values[ts] = datetime.fromisoformat(values[ts]) if values[ts] else None
    values[cost] = Decimal(values[cost]) if values[cost] is not None else None
    return clean_row(values)  # a line written by an older version, or by hand, may hold what jsonb refuses


class Journal:
    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock_file: Any = None
        self._full_warned = False
        self._segments: list[Path] | None = None  # cached once the directory is ours
        self._bytes = 0

    # --- ownership ----------------------------------------------------------------------

    def open(self) -> None:
        """Create and lock the directory; raises JournalLocked if another process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.directory / ".lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise JournalLocked(f"journal {self.directory} is in use by another llm-proxy process") from None
        self._lock_file = lock
        self._segments = sorted(self.directory.glob("segment-*.jsonl"))
        self._bytes = sum(p.stat().st_size for p in self._segments)

    def close(self) -> None:
        self._segments = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- state --------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Oldest first. While this process owns the directory, from memory (no disk on the hot loop)."""
        if self._segments is not None:
            return list(self._segments)
        return sorted(self.directory.glob("segment-*.jsonl"))

    @property
    def pending(self) -> bool:
        return bool(self._segments) if self._segments is not None else bool(self.segments())

    @property
    def size_bytes(self) -> int:
        if self._segments is not None:
            return self._bytes
        return sum(p.stat().st_size for p in self.segments())

    def dead_letters(self) -> int:
        path = self.directory / DEAD_LETTER
        if not path.exists():
            return 0
        with open(path, "rb") as f:
            return sum(1 for _ in f)

    # --- writing ------------------------------------------------------------------------

    def append(self, rows: Sequence[Row]) -> int:
        """Append and fsync; returns how many rows fit under the size cap (the rest are refused)."""
        if not rows:
            return 0
        lines = [encode_line(encode_row(row) + "\n") for row in rows]
        room = self.max_bytes - self.size_bytes
        accepted: list[bytes] = []
        for line in lines:
            room -= len(line)
            if room < 0:
                break
            accepted.append(line)
        if len(accepted) < len(lines) and not self._full_warned:
            self._full_warned = True
            logger.error("llm-proxy journal %s reached its cap of %d MB: new rows are being dropped",
                         self.directory, self.max_bytes >> 20)
        if accepted:
            self._write(accepted)
            self._full_warned = self._full_warned and len(accepted) < len(lines)
        return len(accepted)

    def _write(self, lines: list[bytes]) -> None:
        segments = self.segments()
        path = segments[-1] if segments and segments[-1].stat().st_size < self.segment_bytes else self._new_segment(
            segments)
        data = b"".join(lines)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if self._segments is not None:
            if path not in self._segments:
                self._segments.append(path)
            self._bytes += len(data)

    def _new_segment(self, segments: list[Path]) -> Path:
        number = int(segments[-1].stem.split("-")[1]) + 1 if segments else 1
        return self.directory / f"segment-{number:09d}.jsonl"

    def dead_letter(self, row: Row, reason: str) -> bool:
        """Set a refused row aside with the reason (a safe summary, see storage.errors).
        Never raises: False (and a log line naming no row contents) if it could not be written."""
        try:
            entry = json.dumps({"reason": reason, "row": dict(zip(COLUMNS, row))},
                               default=str, ensure_ascii=False, separators=(",", ":"))
            with open(self.directory / DEAD_LETTER, "ab") as f:
                f.write(encode_line(entry + "\n"))
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:  # a full disk, a removed directory: the caller counts the row as lost
            logger.error("llm-proxy cannot write %s (%s: %s)", self.directory / DEAD_LETTER, type(e).__name__,
                         getattr(e, "strerror", None) or "see the writer's errors")
            return False
        return True

    # --- replay -------------------------------------------------------------------------

    def read(self, path: Path, batch: int) -> Iterator[list[list[Any]]]:
        """Rows of a segment in batches; a torn or damaged line is skipped with a warning."""
        rows: list[list[Any]] = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    rows.append(decode_row(line))
                except (ValueError, TypeError):
                    logger.warning("llm-proxy journal %s line %d is damaged (a crash mid-write?); skipped",
                                   path.name, number)
                    continue
                if len(rows) >= batch:
                    yield rows
                    rows = []
        if rows:
            yield rows

    def done(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            if self._segments is not None and path in self._segments:
                self._segments.remove(path)
                self._bytes -= size
