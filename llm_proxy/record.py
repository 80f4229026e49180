"""The Record: the only thing that crosses from the hooks into the writer thread.

Its fields are the table's columns (schema.sql) minus the serial id, in order.
Bodies travel as the JSON text they arrived as (bytes), or as Python objects
where the proxy built them (a rebuilt stream), and are serialised and
size-capped in the writer thread, off the proxy's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(slots=True)
class Record:
    request_id: str
    ts: datetime
    duration_ms: int | None = None
    ttft_ms: int | None = None
    provider: str | None = None
    api: str | None = None
    method: str | None = None
    path: str | None = None
    upstream_url: str | None = None
    model: str | None = None
    response_model: str | None = None
    key_id: str | None = None
    streaming: bool | None = None
    status: int | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: Decimal | None = None
    attempts: Any = None
    fallback_from: str | None = None
    request_body: Any = None
    response_body: Any = None
    client_addr: str | None = None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
JSON_COLUMNS = frozenset({"attempts", "request_body", "response_body"})
