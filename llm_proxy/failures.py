"""Logging failures without letting a client flood the log.

A hostile or broken client can make the same failure happen on every call
(a body that trips a parser, say). The first occurrence of each kind is logged
with its traceback; later ones are only counted, and the count is logged at
most once a minute per kind. A kind is where the failure was raised (the
exception's type and innermost frame), not its message, so clients cannot
mint new kinds by varying their input; the number of kinds is bounded too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .redact import mask_url

MAX_KINDS = 256
SUMMARY_EVERY = 60.0


@dataclass(slots=True)
class _Kind:
    count: int = 1
    reported: int = 1  # how many of `count` the log has already mentioned
    reported_at: float = 0.0


def _kind_of(what: str, error: BaseException) -> tuple[str, str, str]:
    tb = error.__traceback__
    where = ""
    while tb is not None:
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return what, type(error).__name__, where


class FailureLog:
    def __init__(self, logger: logging.Logger, *, max_kinds: int = MAX_KINDS,
                 summary_every: float = SUMMARY_EVERY) -> None:
        self.logger = logger
        self.max_kinds = max_kinds
        self.summary_every = summary_every
        self._kinds: dict[tuple[str, str, str], _Kind] = {}

    def failed(self, what: str, error: BaseException, *, context: str = "") -> None:
        """Log `what` failed (traceback the first time per kind, then a count now and then).

        `context` (e.g. the request line) may hold a client's `key=` parameter: it is masked.
        """
        now = time.monotonic()
        kind = _kind_of(what, error)
        seen = self._kinds.get(kind)
        if seen is None:
            if len(self._kinds) >= self.max_kinds:
                kind = (what, "(other kinds)", "")
                seen = self._kinds.get(kind)
            if seen is None:
                self._kinds[kind] = _Kind(reported_at=now)
                where = f" for {_safe(mask_url(context))}" if context else ""
                self.logger.error("%s%s: %s: %s (the first of its kind; later ones are counted)",
                                  what, where, type(error).__name__, _safe(mask_url(str(error)))[:300],
                                  exc_info=error)
                return
        seen.count += 1
        if now - seen.reported_at >= self.summary_every:
            self.logger.error("%s: %s happened %d more time(s) (%d in all)", what, type(error).__name__,
                              seen.count - seen.reported, seen.count)
            seen.reported, seen.reported_at = seen.count, now

    def counts(self) -> dict[str, int]:
        """Occurrences per kind, for tests and health."""
        return {f"{what}: {name} at {where}": k.count for (what, name, where), k in self._kinds.items()}


def _safe(text: str) -> str:
    """Printable in any log handler: lone surrogates and control bytes escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n").replace("\r", "\\r")
