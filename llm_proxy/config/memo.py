"""A bounded memo for lookups keyed by what clients send (model names, paths).

Routing and pricing answers depend only on the loaded config, and the same
few models and paths come back on every call, so they are worked out once.
The memo stops growing at `limit` entries so that a client inventing names
cannot grow the proxy's memory; past it, lookups are simply not remembered.
Nor is a key whose text is longer than `max_key_chars` (a model name or path
of a megabyte would otherwise be kept 10,000 times over): real model names
and paths are far shorter, and such a lookup is only worked out each time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


def key_chars(key: object) -> int:
    """Characters of text in a key (a string, or strings nested in tuples)."""
    if isinstance(key, str | bytes):
        return len(key)
    if isinstance(key, tuple):
        return sum(key_chars(part) for part in key)
    return 0


class Memo(Generic[K, V]):
    def __init__(self, compute: Callable[..., V], limit: int = 10_000, max_key_chars: int = 1024) -> None:
        self._compute = compute
        self._limit = limit
        self._max_key_chars = max_key_chars
        self._known: dict[K, V] = {}

    def __call__(self, key: K, *context: Any) -> V:
        """The answer for `key`; `context` is passed on to compute it and must not change it."""
        value = self._known.get(key, _MISSING)
        if value is _MISSING:
            value = self._compute(key, *context)
            if len(self._known) < self._limit and key_chars(key) <= self._max_key_chars:
                self._known[key] = value
        return value  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._known)
