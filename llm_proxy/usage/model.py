"""The provider-neutral usage of one call.

Every parser maps its provider's fields onto these semantics (DESIGN.md):
input counts all input including cache reads and writes, output includes
reasoning, and a count the provider did not report stays None (unknown),
never 0.

Upstream numbers are not trusted blindly. A count is a non-negative integer
that fits the `integer` columns of the calls table; anything else the
provider sends in its place (a string, a bool, a negative or fractional
number, NaN, 1e400, a number past 2**31-1) is unknown, because storing or
pricing it would either fail or invent a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The calls table stores counts as PostgreSQL `integer`; a larger count could
# not be written, so it is as unknown as one that was never sent.
MAX_COUNT = 2**31 - 1

_INPUT_SIDE = ("input_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens")
_OUTPUT_SIDE = ("output_tokens", "reasoning_tokens")


def valid_count(value: Any) -> int | None:
    """`value` as a count, or None when it is not a non-negative integer that can be stored.

    JSON has one number type, so an integral float (12.0) is the count 12;
    12.7, -5, NaN, inf, True and "12" are not counts at all.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else None
    if isinstance(value, float):
        # NaN and inf are not integral, so they fail here too.
        return int(value) if value.is_integer() and 0 <= value <= MAX_COUNT else None
    return None


@dataclass(slots=True)
class Usage:
    """Counts of one call, plausible by construction (see `__post_init__`)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    # The part of cache_write_tokens written with Anthropic's 1-hour TTL (priced higher).
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    web_search_requests: int | None = None
    # The service tier the provider says it served (OpenAI `service_tier`, Anthropic
    # `usage.service_tier`): flex and priority are priced differently.
    service_tier: str | None = None

    def __post_init__(self) -> None:
        """Keep only counts that can be true together.

        Every field must be a valid count (sums built by the parsers can pass
        the storable bound). Then the parts must fit inside their whole:
        cache reads plus cache writes inside input, the 1-hour writes inside
        the writes, reasoning inside output. When a provider's parts do not
        fit, its numbers for that side contradict each other and we cannot
        tell which one is wrong, so the whole side (input with its cache
        parts, or output with its reasoning) becomes unknown. Pricing such a
        call would otherwise bill `input - cached - writes` < 0 tokens: a
        negative cost. With the side unknown the cost is NULL instead.
        """
        if self.service_tier is not None:
            self.service_tier = tier_name(self.service_tier)
        for name in (*_INPUT_SIDE, *_OUTPUT_SIDE, "web_search_requests"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, valid_count(value))
        if not self._input_side_fits():
            for name in _INPUT_SIDE:
                setattr(self, name, None)
        if self.output_tokens is not None and (self.reasoning_tokens or 0) > self.output_tokens:
            for name in _OUTPUT_SIDE:
                setattr(self, name, None)

    def _input_side_fits(self) -> bool:
        writes, writes_1h = self.cache_write_tokens, self.cache_write_1h_tokens
        if writes is not None and writes_1h is not None and writes_1h > writes:
            return False
        if self.input_tokens is None:
            return True
        return (self.cached_tokens or 0) + (writes or 0) <= self.input_tokens

    @property
    def total_tokens(self) -> int | None:
        """input + output; with one side unknown, the known side; None if the sum cannot be stored."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        total = (self.input_tokens or 0) + (self.output_tokens or 0)
        return total if total <= MAX_COUNT else None

    @property
    def known(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None


def count(obj: Any, *path: str) -> int | None:
    """The count at `obj[path...]`, or None when any step is missing or the value is not a count."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return valid_count(obj)


def count_or_zero(obj: Any, key: str) -> int | None:
    """A count a provider omits when it is zero: absent or null -> 0, not a count -> None.

    For fields inside an object the provider did send (proto3 `usageMetadata`,
    Ollama's `omitempty` metrics, `*_details` objects).
    """
    value = obj.get(key) if isinstance(obj, dict) else None
    return 0 if value is None else valid_count(value)


def detail(obj: Any, details_key: str, field: str) -> int | None:
    """A count inside an optional `*_details` object: absent object -> None, absent field -> 0.

    Providers omit zero fields inside a details object they did send, but an
    absent details object means the provider did not report that class at all.
    A field that holds something other than a count is unknown.
    """
    details = obj.get(details_key) if isinstance(obj, dict) else None
    if not isinstance(details, dict):
        return None
    return count_or_zero(details, field)


def garbled(obj: Any, *path: str) -> bool:
    """True when the value at `obj[path...]` is there but is not a count.

    For the parts of input (cached, cache writes): such a part reads as None, which
    elsewhere means "not reported" and is priced as 0; a part the provider did send
    but garbled is not that, so the caller makes the whole input side unknown.
    """
    for key in path:
        if not isinstance(obj, dict):
            return False
        obj = obj.get(key)
    return obj is not None and valid_count(obj) is None


def add(*counts: int | None) -> int | None:
    """The sum of counts, unknown when any of them is (the bound is checked by Usage)."""
    if any(c is None for c in counts):
        return None
    return sum(c for c in counts if c is not None)


def text(value: Any) -> str | None:
    """An upstream string fit for a row and a log line; None when it is not a string.

    JSON's `\\ud800` escape gives Python a lone surrogate, which no UTF-8
    encoder (PostgreSQL, SQLite, log files) accepts; it becomes U+FFFD.
    """
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


def tier_name(value: Any) -> str | None:
    """A service tier as a provider names it ("default", "flex", "priority"); None if not one."""
    if not isinstance(value, str) or not 0 < len(value) <= 32 or not value.replace("_", "").isalnum():
        return None
    return value.lower()


def error_text(obj: Any) -> str | None:
    """The error an API body reports, in any provider's shape, as one line.

    OpenAI `{"error": {"type", "message"}}`, Anthropic `{"type": "error",
    "error": {...}}`, Gemini `{"error": {"status", "message"}}`, Ollama
    `{"error": "..."}`, Responses `{"type": "error", "code", "message"}`, AWS `{"message": "..."}`.
    """
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, str) and err:
        return text(err)
    if not isinstance(err, dict):
        if obj.get("type") != "error":
            # AWS JSON protocol errors (Bedrock): {"message": "..."} (some services: "Message")
            aws = obj.get("message") or obj.get("Message")
            return text(aws) if isinstance(aws, str) and err is None else None
        err = obj
    kind = err.get("type") if err.get("type") != "error" else None
    kind = kind or err.get("status") or err.get("code")
    message = err.get("message") or ""
    line = f"{kind}: {message}" if kind else str(message)
    return text(line or "error")
