"""Turning a `Prefer: respond-async` request into a job row: what is kept, and what never is.

Plain functions of a request, so they are tested without a proxy. The stored
request has no credential headers, no `key=` parameter and none of the
connection's own headers; a passthrough client's credential travels apart
(credentials.py).
"""

from __future__ import annotations

from mitmproxy import http

from ..redact import KEY_HEADERS, without_key_params
from . import credentials
from .store import NewJob, now

MARKER = "x-llm-proxy-job"  # the runner's header on a job's own call (checked and stripped by the addon)
WEBHOOK_HEADER = "llm-webhook"
UNSTORED = frozenset({*KEY_HEADERS, "prefer", WEBHOOK_HEADER, MARKER, "host", "content-length", "connection",
                      "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
                      "proxy-connection", "accept-encoding", "cookie", "expect"})


def wants_async(prefer: str) -> bool:
    """RFC 7240: `Prefer: respond-async` among other preferences (`wait=10, respond-async`)."""
    return any(p.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


def credential_of(request: http.Request) -> credentials.Credential:
    """The client's own key (passthrough): its key headers, and the path if a `key=` parameter carries it."""
    headers = tuple((n, v) for n, v in request.headers.items(multi=True) if n.lower() in KEY_HEADERS)
    path = request.path if without_key_params(request.path) != request.path else None
    return credentials.Credential(headers, path)


def new_job(job_id: str, node: str, mode: str, request: http.Request, *, key_id: str | None,
            credential: credentials.Credential | None, secret: str, webhook: str | None) -> NewJob:
    """The row of a new job; a passthrough credential is sealed into it only when there is a secret."""
    return NewJob(
        id=job_id, node=node, created=now(), key_id=key_id, mode=mode, method=request.method,
        scheme=request.scheme, host=request.host, port=request.port, path=without_key_params(request.path),
        headers=[[n, v] for n, v in request.headers.items(multi=True) if n.lower() not in UNSTORED],
        body=request.raw_content or b"", needs_credential=credential is not None,
        credential=credentials.seal(secret, job_id, credential) if credential is not None and secret else None,
        webhook=webhook,
    )
