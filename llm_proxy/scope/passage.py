"""A provider request that is not a model call: passed on untouched, never recorded.

Passthrough mode: it goes upstream exactly as the client sent it (with the
client's own credential, to the provider its host or path prefix names).
Keys mode: the proxy must not become an open relay to a provider's host, so
the client must still present a valid virtual key (else the usual 401/403,
answered locally); the virtual key is then removed and, but for a model
listing, no real key put in its place (see filter.may_carry_real_key).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mitmproxy import http

from ..access import Access, judge_key
from ..limits.limiter import Refusal
from ..redact import client_key, replace_credentials
from ..routing import Route, split_query
from .filter import model_listing

logger = logging.getLogger(__name__)


def pass_on(access: Access, request: http.Request, route: Route) -> Refusal | None:
    """Check and rewrite a non-model request; a Refusal is answered locally, None sends it on."""
    if access.keys_required:
        secret = client_key(request)
        key, refusal = judge_key(access.keys.find(secret) if secret else None, bool(secret), None,
                                 datetime.now(UTC))
        if refusal is not None:
            return refusal
    if route.upstream_url is not None:
        request.url = route.upstream_url  # first: the URL carries the query, `key=` included
    if access.keys_required:
        provider = route.provider
        listing = model_listing(request.method, split_query(request.path)[0])
        replace_credentials(request, provider.format, access.provider_keys.get(provider.name) if listing else None)
    return None
