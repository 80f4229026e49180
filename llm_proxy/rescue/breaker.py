"""Circuit breakers per provider/model.

After `failures` consecutive failures a breaker opens for `cooldown` seconds;
a connection error opens it at once (a dead host will not answer the next
call either). While open, plans skip that target, so calls go to the fallback
up front (and streamed calls stay streamed). After the cooldown one call is
let through as a probe (half-open): success closes the breaker, failure opens
it again.

Targets are keyed by provider and model, and the model can be the client's
own (a glob route or a fallback chain without a model of its own), so a
client inventing model names must not grow the table: a closed breaker with
no failures is not stored at all, a model name is kept to its first
MAX_MODEL_CHARS characters, and at most `max_targets` breakers are kept (a
full table first lets go of breakers that are not open; a target that still
finds no room is simply not tracked, i.e. stays closed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config.models import Target

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
MAX_TARGETS = 1000
MAX_MODEL_CHARS = 256


def _key(target: Target) -> Target:
    model = target.model
    if model is not None and len(model) > MAX_MODEL_CHARS:
        return Target(target.provider, model[:MAX_MODEL_CHARS])
    return target


@dataclass(slots=True)
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    def __init__(self, failures: int = 5, cooldown: float = 30.0, max_targets: int = MAX_TARGETS) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.max_targets = max_targets
        self._states: dict[Target, _State] = {}  # only targets with failures: a missing one is closed
        self._full_warned = False

    def __len__(self) -> int:
        return len(self._states)

    def state(self, target: Target, now: float) -> str:
        st = self._states.get(_key(target))
        if st is None or st.opened_at is None:
            return CLOSED
        return HALF_OPEN if now - st.opened_at >= self.cooldown else OPEN

    def open_targets(self) -> list[str]:
        """Targets whose breaker is open or half-open (for /_llm/health)."""
        return sorted(str(t) for t, st in self._states.items() if st.opened_at is not None)

    def allow(self, target: Target, now: float) -> bool:
        """May a call go to `target` now? Reserves the single probe of a half-open breaker."""
        st = self._states.get(_key(target))
        if st is None or st.opened_at is None:
            return True
        if now - st.opened_at < self.cooldown or st.probing:
            return False
        st.probing = True
        return True

    def success(self, target: Target) -> None:
        st = self._states.pop(_key(target), None)
        if st is not None and st.opened_at is not None:
            logger.info("llm-proxy circuit for %s closed again", target)

    def failure(self, target: Target, now: float, *, connection: bool = False) -> None:
        key = _key(target)
        st = self._states.get(key)
        if st is None:
            if len(self._states) >= self.max_targets and not self._make_room(now):
                return
            st = self._states[key] = _State()
        st.failures += 1
        st.probing = False
        if connection or st.failures >= self.failures or st.opened_at is not None:
            if st.opened_at is None or now - st.opened_at >= self.cooldown:
                logger.warning("llm-proxy circuit for %s opened for %gs after %d failure(s)%s",
                               key, self.cooldown, st.failures, " (connection error)" if connection else "")
            st.opened_at = now

    def _make_room(self, now: float) -> bool:
        """Let go of breakers that are not open (closed with a few failures, or past their cooldown
        with no probe out: both act as closed when forgotten); False if every one is open."""
        idle = [t for t, st in self._states.items()
                if st.opened_at is None or (now - st.opened_at >= self.cooldown and not st.probing)]
        for t in idle:
            del self._states[t]
        if idle:
            return True
        if not self._full_warned:
            self._full_warned = True
            logger.warning("llm-proxy: %d circuit breakers are open at once; failures of other targets "
                           "are not tracked until some close", self.max_targets)
        return False
