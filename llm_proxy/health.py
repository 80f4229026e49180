"""`/_llm/health`: the proxy's own state, answered by the addon and never forwarded.

`status` is "ok", "degraded" (rows are safe but not in the database yet, or
would not survive a stop: database not up, journal backlog, no journal) or
"failing" (the writer thread is gone: rows are not being stored at all), with
a `reason` in plain words. "failing" answers HTTP 503, so a load balancer or
an orchestrator's probe takes the proxy out. Nothing here quotes row
contents, SQL or secrets: `last_error` is the writer's safe summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import http

HEALTH_PATH = "/_llm/health"
PREFIX = "/_llm/"
FAILING = "failing"


def _status(writer: Any, database: str, journal_bytes: int) -> tuple[str, str | None]:
    if writer is None:
        return "degraded", "no writer: rows are not stored"
    if not writer.alive:
        return FAILING, "the writer thread has stopped: rows are not being stored"
    if database != "up":
        return "degraded", f"database {database}: rows are kept and written when it is back"
    if getattr(writer, "journal_problem", None):
        return "degraded", f"no journal: {writer.journal_problem}; rows wait in memory while the database is down"
    if journal_bytes:
        return "degraded", "the journal holds rows not yet in the database (being replayed)"
    return "ok", None


def health(writer: Any, gate: Any, open_breakers: list[str], keys: int,
           parts: Mapping[str, Callable[[], dict[str, Any] | None]] | None = None) -> dict[str, Any]:
    """The proxy's state; `parts` are other addons' sections (e.g. "redis"), each a dict or None.

    A part whose "state" is "down" makes an "ok" proxy "degraded", with the part's "when_down" as the reason.
    """
    stats = writer.stats if writer is not None else None
    journal_bytes = writer.journal_bytes if writer is not None else 0
    database = stats.database if stats else "none"
    status, reason = _status(writer, database, journal_bytes)
    extra = {name: part() for name, part in (parts or {}).items()}
    for name, section in extra.items():
        if section is not None and section.get("state") == "down" and status == "ok":
            status, reason = "degraded", f"{name} unreachable: {section.get('when_down', '')}".rstrip(": ")
    return {
        "status": status,
        "reason": reason,
        "database": database,
        "writer": {
            "queue_depth": writer.queue_depth if writer is not None else 0,
            "rows_written": stats.rows_written if stats else 0,
            "rows_journaled": stats.rows_journaled if stats else 0,
            "rows_dropped": stats.rows_dropped if stats else 0,
            "dead_letters": stats.dead_letters if stats else 0,
            "internal_errors": stats.internal_errors if stats else 0,
            "last_error": stats.last_error if stats else None,
        },
        "journal_bytes": journal_bytes,
        "queue": {"active": gate.active, "waiting": gate.waiting} if gate is not None else None,
        "open_breakers": open_breakers,
        "keys": keys,
        **extra,
    }


def answer(path: str, state: dict[str, Any]) -> http.Response:
    if path.partition("?")[0] != HEALTH_PATH:
        return http.Response.make(404, json.dumps({"error": f"no such llm-proxy endpoint: {path}"}),
                                  {"content-type": "application/json"})
    return http.Response.make(503 if state.get("status") == FAILING else 200, json.dumps(state),
                              {"content-type": "application/json", "cache-control": "no-store"})
