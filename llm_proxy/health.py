"""`/_llm/health`: the proxy's own state, answered by the addon and never forwarded."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

HEALTH_PATH = "/_llm/health"
PREFIX = "/_llm/"


def health(writer: Any, gate: Any, open_breakers: list[str], keys: int) -> dict[str, Any]:
    stats = writer.stats if writer is not None else None
    journal_bytes = writer.journal_bytes if writer is not None else 0
    database = stats.database if stats else "none"
    return {
        "status": "ok" if database == "up" and not journal_bytes else "degraded",
        "database": database,
        "writer": {
            "queue_depth": writer.queue_depth if writer is not None else 0,
            "rows_written": stats.rows_written if stats else 0,
            "rows_journaled": stats.rows_journaled if stats else 0,
            "rows_dropped": stats.rows_dropped if stats else 0,
            "dead_letters": stats.dead_letters if stats else 0,
            "last_error": stats.last_error if stats else None,
        },
        "journal_bytes": journal_bytes,
        "queue": {"active": gate.active, "waiting": gate.waiting} if gate is not None else None,
        "open_breakers": open_breakers,
        "keys": keys,
    }


def answer(path: str, state: dict[str, Any]) -> http.Response:
    if path.partition("?")[0] != HEALTH_PATH:
        return http.Response.make(404, json.dumps({"error": f"no such llm-proxy endpoint: {path}"}),
                                  {"content-type": "application/json"})
    return http.Response.make(200, json.dumps(state), {"content-type": "application/json",
                                                       "cache-control": "no-store"})
