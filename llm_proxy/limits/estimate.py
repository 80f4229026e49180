"""What a call may use, known before it is sent: the basis of reservations for tpm and budgets.

Two numbers per call, from its request alone:

- `tokens` (for tpm): input estimated at 4 bytes of request body a token (typical
  for English text in JSON) plus the call's max output tokens when it names one.
  A call is refused before the fact when this would pass the key's tpm; when it
  ends, the estimate is replaced by the real usage.
- `cost` (for budgets): an upper bound, not a guess. Input is bounded by the
  body's bytes (a token is at least one byte of text, and the JSON framing adds
  more bytes than the chat template adds tokens); output by the call's max output
  tokens, or `output_bound` (option llm_budget_output_tokens, 4096 by default)
  when it names none. Priced like the row will be (pricing.toml, genai-prices); a
  model with no price reserves nothing (its cost will be unknown too).

Because the budget's reservation is an upper bound, admission that keeps
`spend + reservations < budget` overshoots a budget by less than one call's cost
(the last call admitted). Known gaps: an image or file given by URL costs tokens
its bytes do not show, and a call with no max output that writes more than
`output_bound` tokens; both can let a budget be passed by more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from ..usage.model import Usage

BYTES_PER_TOKEN = 4  # the tpm estimate of input
DEFAULT_OUTPUT_BOUND = 4096
MAX_COUNT = 10_000_000  # a client's max_tokens is untrusted input: cap what it can reserve
_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    tokens: int = 0
    cost: Decimal = Decimal(0)


NOTHING = Estimate()
Price = Callable[[str, str | None, Usage], Decimal | None]  # (provider, model, usage) -> USD or None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return min(value, MAX_COUNT)


def max_output(body: Any) -> int | None:
    """The largest output the request allows, in any provider's spelling; None if it names none."""
    if not isinstance(body, dict):
        return None
    found = [_count(body.get(f)) for f in _OUTPUT_FIELDS]
    config = body.get("generationConfig") or body.get("generation_config")  # Gemini
    if isinstance(config, dict):
        found.append(_count(config.get("maxOutputTokens")))
        found.append(_count(config.get("max_output_tokens")))
    options = body.get("options")  # Ollama
    if isinstance(options, dict):
        found.append(_count(options.get("num_predict")))
    counts = [c for c in found if c is not None]
    return max(counts) if counts else None


def estimate(body_bytes: int, output: int | None, provider: str, model: str | None, price: Price | None,
             *, output_bound: int = DEFAULT_OUTPUT_BOUND, priced: bool = True) -> Estimate:
    """The call's tpm estimate and budget bound (see the module docstring) from its body's size and
    max output (`max_output` of its body); `priced=False` skips pricing."""
    tokens = math.ceil(body_bytes / BYTES_PER_TOKEN) + (output or 0)
    cost = Decimal(0)
    if priced and price is not None:
        bound = Usage(input_tokens=min(body_bytes, MAX_COUNT), output_tokens=output or output_bound)
        cost = price(provider, model, bound) or Decimal(0)
    return Estimate(tokens, cost)


def nanos(amount: Decimal) -> int:
    """USD as whole nano-dollars, rounded up (shared counters are integers; a budget errs towards spend)."""
    return int((amount * 1_000_000_000).to_integral_value(rounding=ROUND_CEILING))
