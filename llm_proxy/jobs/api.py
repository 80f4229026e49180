"""What the jobs API shows: the job object, the webhook payload, and who may see a job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http

from ..control import auth
from ..keys.model import KeyRing
from ..redact import fingerprint
from .store import FINAL, JobRow

PREFIX = "/_llm/jobs/"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def body_value(content: bytes | None) -> Any:
    """A response body as JSON when it is JSON, else as text."""
    if content is None:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def response_of(row: JobRow) -> dict[str, Any] | None:
    if row.response_status is None:
        return None
    return {"status": row.response_status, "body": body_value(row.response_body)}


def view(row: JobRow) -> dict[str, Any]:
    """The job object of GET /_llm/jobs/<id> (contract fields first)."""
    return {
        "id": row.id, "status": row.status, "created": iso(row.created), "started": iso(row.started),
        "finished": iso(row.finished), "queue_position": row.queue_position, "response": response_of(row),
        "error": row.error, "attempts": row.attempts, "request_id": row.request_id, "rerun": row.rerun,
        "key": row.key_id, "webhook": row.webhook_status, "webhook_tries": row.webhook_tries,
        "webhook_error": row.webhook_error,
    }


def payload(row: JobRow) -> dict[str, Any]:
    """The webhook body: {"id", "status", "response" | "error"} (both when a failed call has an answer)."""
    assert row.status in FINAL
    body: dict[str, Any] = {"id": row.id, "status": row.status}
    response = response_of(row)
    if response is not None:
        body["response"] = response
    if row.error is not None or response is None:
        body["error"] = row.error or ("cancelled before it started" if row.status == "cancelled" else None)
    return body


def may_see(token: str | None, admin_key: str, peer: str | None, ring: KeyRing,
            owner: str | None) -> tuple[int, str] | None:
    """None when the caller may read or cancel a job of `owner` (key_id); else (status, message).

    The admin, the virtual key that made the job, or (passthrough) the same provider key,
    recognised by its fingerprint. Another key's job answers 404, as if it did not exist."""
    caller = auth.identify(token, admin_key, peer, ring)
    if isinstance(caller, auth.Caller):
        if caller.admin or (caller.key is not None and caller.key.name == owner):
            return None
        return 404, "no such job"
    if token is not None and not len(ring) and owner is not None and fingerprint(token) == owner:
        return None
    return caller.status, caller.message


def json_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(status, json.dumps(body).encode(), {
        "content-type": "application/json", "cache-control": "no-store", **(headers or {})})


def api_error(status: int, message: str) -> http.Response:
    kind = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            409: "conflict", 503: "unavailable"}.get(status, "error")
    return json_answer(status, {"error": {"message": message, "type": kind}})
