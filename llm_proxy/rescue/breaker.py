"""Circuit breakers per provider/model.

After `failures` consecutive failures a breaker opens for `cooldown` seconds;
a connection error opens it at once (a dead host will not answer the next
call either). While open, plans skip that target, so calls go to the fallback
up front (and streamed calls stay streamed). After the cooldown one call is
let through as a probe (half-open): success closes the breaker, failure opens
it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config.models import Target

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(slots=True)
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    def __init__(self, failures: int = 5, cooldown: float = 30.0) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._states: dict[Target, _State] = {}

    def state(self, target: Target, now: float) -> str:
        st = self._states.get(target)
        if st is None or st.opened_at is None:
            return CLOSED
        return HALF_OPEN if now - st.opened_at >= self.cooldown else OPEN

    def open_targets(self) -> list[str]:
        """Targets whose breaker is open or half-open (for /_llm/health)."""
        return sorted(str(t) for t, st in self._states.items() if st.opened_at is not None)

    def allow(self, target: Target, now: float) -> bool:
        """May a call go to `target` now? Reserves the single probe of a half-open breaker."""
        st = self._states.get(target)
        if st is None or st.opened_at is None:
            return True
        if now - st.opened_at < self.cooldown or st.probing:
            return False
        st.probing = True
        return True

    def success(self, target: Target) -> None:
        st = self._states.get(target)
        if st is not None and (st.failures or st.opened_at is not None):
            if st.opened_at is not None:
                logger.info("llm-proxy circuit for %s closed again", target)
            self._states[target] = _State()

    def failure(self, target: Target, now: float, *, connection: bool = False) -> None:
        st = self._states.setdefault(target, _State())
        st.failures += 1
        st.probing = False
        if connection or st.failures >= self.failures or st.opened_at is not None:
            if st.opened_at is None or now - st.opened_at >= self.cooldown:
                logger.warning("llm-proxy circuit for %s opened for %gs after %d failure(s)%s",
                               target, self.cooldown, st.failures, " (connection error)" if connection else "")
            st.opened_at = now
