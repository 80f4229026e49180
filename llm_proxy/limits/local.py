"""The interface every limit goes through (Access calls only this), and its one-proxy form.

`Limits` is what Access needs: admit a key's call (parallel, rpm, tpm, budget,
with the call's estimate reserved), enter the global gate (llm_max_concurrent),
give slots back when the call ends, and settle its reservation with the real
usage when its row is made. `LocalLimits` keeps all of it in this process
(Limiter, Gate); the cluster addon swaps in limits shared through Redis
(llm_proxy/cluster/) that fall back to a LocalLimits while Redis is away.
"""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ..keys.model import VirtualKey
from .estimate import NOTHING, Estimate
from .gate import Gate
from .limiter import Limiter, Refusal

if TYPE_CHECKING:
    from ..calls import Call


class Limits(Protocol):
    async def admit_key(self, key: VirtualKey, call: Call, estimate: Estimate, spend: Decimal | None,
                        wall: datetime) -> Refusal | None: ...

    async def enter_gate(self, gate: Gate, call: Call) -> str | None: ...

    def release(self, call: Call) -> None: ...

    def settle(self, call: Call, tokens: int | None, cost: Decimal | None) -> None: ...

    def state(self) -> dict[str, Any] | None: ...


class LocalLimits:
    """Limits counted by this proxy alone (no llm_redis)."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def admit_key(self, key: VirtualKey, call: Call, estimate: Estimate, spend: Decimal | None,
                        wall: datetime) -> Refusal | None:
        return self.admit_now(key, call, estimate, spend, wall)

    def admit_now(self, key: VirtualKey, call: Call, estimate: Estimate, spend: Decimal | None,
                  wall: datetime) -> Refusal | None:
        refusal = self.limiter.admit(key, time.monotonic(), spend, wall, estimate)
        if refusal is None:
            call.holds_key = True
            call.estimate = estimate
        return refusal

    async def enter_gate(self, gate: Gate, call: Call) -> str | None:
        outcome = await gate.enter()
        if outcome is None:
            call.gate = gate
        return outcome

    def release(self, call: Call) -> None:
        """Give back the call's slots; safe to call more than once."""
        if call.holds_key and call.key_id is not None:
            self.limiter.release(call.key_id)
            call.holds_key = False
        if call.gate is not None:
            call.gate.leave()  # the gate it entered, even if the option changed since
            call.gate = None

    def settle(self, call: Call, tokens: int | None, cost: Decimal | None = None) -> None:
        """The call's estimate gives way to its real tokens (its real cost reaches the SpendBook via the writer)."""
        estimate, call.estimate = call.estimate, None
        if call.key_id is not None and (estimate is not None or tokens):
            self.limiter.settle(call.key_id, estimate or NOTHING, time.monotonic(), tokens)

    def state(self) -> dict[str, Any] | None:
        return None
