"""A bounded memo for lookups keyed by what clients send (model names, paths).

Routing and pricing answers depend only on the loaded config, and the same
few models and paths come back on every call, so they are worked out once.
The memo stops growing at `limit` entries so that a client inventing names
cannot grow the proxy's memory; past it, lookups are simply not remembered.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class Memo(Generic[K, V]):
    def __init__(self, compute: Callable[..., V], limit: int = 10_000) -> None:
        self._compute = compute
        self._limit = limit
        self._known: dict[K, V] = {}

    def __call__(self, key: K, *context: Any) -> V:
        """The answer for `key`; `context` is passed on to compute it and must not change it."""
        value = self._known.get(key, _MISSING)
        if value is _MISSING:
            value = self._compute(key, *context)
            if len(self._known) < self._limit:
                self._known[key] = value
        return value  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._known)
