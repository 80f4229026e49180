"""The `llm-signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The same scheme as Stripe's, so receivers know it: the timestamp is signed
with the body, which lets a receiver refuse old replays (compare t with its
clock) and dedupe retries (job id + t). The secret is used as its raw UTF-8
bytes. A receiver needs only hmac and hashlib:

    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, v1)
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "llm-signature"


def signature(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """The header value for `body`, signed now."""
    return signature(secret, body, int(time.time() if now is None else now))


def verify(secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: float = 300) -> bool:
    """Whether `header` signs `body` with `secret` and is at most `tolerance` seconds old."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).partition(",v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))
