"""One metered call: what the request hook learns, and the Record it becomes.

`open_call` reads and (where needed) rewrites the request; `close_call` turns
the finished flow into a priced Record. Both are plain functions of a flow so
tests can drive them with `tflow` without a running proxy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from mitmproxy import http

from . import apis, headers
from .keys.model import hash_secret
from .redact import client_key, fingerprint_of, is_signed, key_param_to_header, mask_url
from .record import Record
from .limits.estimate import Estimate, max_output
from .limits.gate import Gate
from .routing import Route
from .stream.meter import StreamMeter
from .usage import Usage, bedrock, error_text, json_usage
from .usage.base import loads, std_loads


# Flow metadata set by the jobs addon on a queued job's own call (never from client input):
# the hash of the virtual key the job runs as, since the proxy does not keep the key's secret.
KEY_HASH = "llm_proxy.key_hash"
# Flow metadata set by the jobs addon on a job's re-run after a restart: the earlier run it
# replaces, which left no row (the proxy stopped mid-call) but may have been billed. It becomes
# the first entry of the row's `attempts`, so the row says so.
LOST_ATTEMPT = "llm_proxy.lost_attempt"
_ACCEPT_ENCODING = frozenset({b"accept-encoding"})
_IDENTITY = ((b"accept-encoding", b"identity"),)


@dataclass(slots=True)
class Call:
    route: Route
    model: str | None
    streaming: bool
    strip_usage_chunk: bool  # we injected include_usage: hide its chunk from the client
    request_body: Any
    key_id: str | None
    path: str  # as the client sent it, secrets masked
    key_hash: str | None = None  # hash of the credential presented (the secret itself is never kept)
    meter: StreamMeter | None = None
    local: bool = False  # answered by the proxy itself, never sent upstream
    holds_key: bool = False  # counts against its virtual key's parallel limit
    gate: Gate | None = None  # the global gate it holds a slot in
    max_output: int | None = None  # the output it allows (max_tokens, ...), for tpm and budget estimates
    estimate: Estimate | None = None  # tpm tokens and budget cost reserved for it, until settled
    hold: Any = None  # what shared limits (llm_redis) hold for it: slots and reservations to give back
    done: bool = False  # its flow has ended (response or error hook ran)


@dataclass(slots=True)
class Outcome:
    """What close_call found, besides the Record (for pricing and the comment)."""

    usage: Usage
    response_model: str | None


def _with_stream_usage(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return {**body, "stream_options": options}


def request_json(raw: bytes) -> Any:
    """The request body parsed just enough to read its model and stream fields: orjson, unguarded.

    orjson reads integers past 64 bits as floats, which changes neither a model
    name (a str) nor a stream flag, and refuses what json might accept (NaN, a
    byte order mark, UTF-16, lone surrogates): then json parses it, so the
    fields found are always json's. A body that must be rewritten is parsed
    again by json alone (`std_loads`): its numbers go on unchanged.
    """
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except ValueError:
        return std_loads(raw)


def open_call(flow: http.HTTPFlow, route: Route) -> Call:
    """Read the request, move it to its upstream, and ask for streamed usage where needed."""
    request = flow.request
    raw = headers.body(request)
    body = request_json(raw)
    api = route.api
    bare_path = request.path.partition("?")[0]
    model = apis.model_from_path(bare_path, api) if api in apis.MODEL_IN_PATH else None
    if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
        model = body["model"]
    if model is None and "/deployments/" in bare_path:
        model = apis.model_from_path(bare_path, api)  # Azure OpenAI: the deployment stands for the model
    streaming = apis.wants_stream(api, bare_path, body)
    secret = client_key(request)
    key_hash = flow.metadata.get(KEY_HASH) or (hash_secret(secret) if secret else None)
    call = Call(
        route=route,
        model=model,
        streaming=streaming,
        strip_usage_chunk=False,
        # The client's own JSON text: stored as is, with no second serialisation in the writer.
        request_body=raw if body is not None else _opaque_body(raw),
        key_id=fingerprint_of(key_hash) if key_hash else None,
        key_hash=key_hash,
        path=mask_url(request.path),
        max_output=max_output(body),
    )
    if route.upstream_url is not None:
        request.url = route.upstream_url
    if is_signed(request, secret):
        # SigV4 signs the method, path, query, the signed headers and the body's hash: any change
        # (even header order or accept-encoding) makes the provider refuse the call, so a signed
        # request goes upstream exactly as the client sent it. Its answer is metered all the same.
        return call
    if route.provider.format == "gemini" and b"?" in request.data.path:
        key_param_to_header(request)
    if api in apis.METERED:
        headers.rewrite(request.headers, _ACCEPT_ENCODING, _IDENTITY)  # chunks must be readable as they pass
    if (
        streaming
        and route.provider.inject_stream_usage
        and api in (apis.OPENAI_CHAT, apis.OPENAI_COMPLETIONS)
        and isinstance(body, dict)
        and not (isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"))
        and _accepts_stream_options(request)
    ):
        request.content = json.dumps(_with_stream_usage(std_loads(raw))).encode()
        call.strip_usage_chunk = True
    return call


# Azure OpenAI answers 400 "Unknown parameter: 'stream_options'" before this api-version.
_FIRST_STREAM_OPTIONS_VERSION = "2024-08-01"


def _accepts_stream_options(request: http.Request) -> bool:
    """False for an Azure OpenAI dated api-version older than stream_options: injecting it would
    make the provider refuse a call the client made correctly (its stream is then unmetered)."""
    if b"api-version=" not in request.data.path:
        return True  # not Azure, or its v1 API (no api-version)
    version = request.query.get("api-version", "")
    return version[:10] >= _FIRST_STREAM_OPTIONS_VERSION


def unreadable_call(flow: http.HTTPFlow, route: Route) -> Call:
    """The Call of a request `open_call` failed on: enough for its row, nothing read from the body."""
    content = flow.request.raw_content
    return Call(route=route, model=None, streaming=False, strip_usage_chunk=False,
                request_body=_opaque_body(content), key_id=None, path=mask_url(flow.request.path), local=True)


def fallback_record(flow: http.HTTPFlow, call: Call, reason: str) -> Record:
    """The row of a call whose answer could not be read: who, when, where, and why it is bare."""
    request, response = flow.request, flow.response
    return Record(
        request_id=flow.id,
        ts=datetime.fromtimestamp(request.timestamp_start, UTC),
        duration_ms=_ms(time.time() - request.timestamp_start),
        provider=call.route.provider.name,
        api=call.route.api,
        method=request.method,
        path=call.path,
        model=call.model,
        key_id=call.key_id,
        streaming=call.streaming,
        status=response.status_code if response is not None else None,
        error=reason,
        client_addr=flow.client_conn.peername[0] if flow.client_conn.peername else None,
    )


def _opaque_body(content: bytes | None) -> Any:
    """A non-JSON request body is not stored, only described."""
    return {"non_json_bytes": len(content)} if content else None


def token_columns(usage: Usage) -> dict[str, int | None]:
    """A row's token columns from a call's usage (HTTP and WebSocket rows alike)."""
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens, "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens, "reasoning_tokens": usage.reasoning_tokens}


def close_call(flow: http.HTTPFlow, call: Call, *, log_bodies: bool,
               interrupted: str | None = None) -> tuple[Record, Outcome]:
    """Turn a finished (or failed) flow into its Record; pricing is the caller's.

    `interrupted`: why the proxy ends the call itself (shutting down with the call in flight).
    """
    request, response = flow.request, flow.response
    now = time.time()
    started = request.timestamp_start
    status = response.status_code if response is not None else None
    usage, response_model, body, parsed, error = Usage(), None, None, None, None
    first_byte: float | None = None
    if call.meter is not None:
        call.meter.finish()
        parser = call.meter.parser
        usage, response_model, error = parser.usage, parser.response_model, parser.error
        body = parser.body()
        first_byte = call.meter.first_byte_at
        if call.meter.meter_error and not error:
            error = call.meter.meter_error
    elif response is not None:
        first_byte = response.timestamp_start
        content = headers.body(response)
        parsed = loads(content)
        if status is not None and 200 <= status < 300:
            usage, response_model = json_usage(call.route.api, parsed)
            if not usage.known and call.route.api == apis.BEDROCK_INVOKE:
                usage = bedrock.header_usage(response.headers)  # a model whose body we do not read
        body = content if parsed is not None else _opaque_body(content)
    if status is not None and status >= 400:
        error = f"HTTP {status}: {error_text(parsed) or (response.reason if response else '')}".rstrip(": ")
        if call.local:
            error = f"llm-proxy answered {error}"
    # A provider error reported inside the stream is the cause; the client
    # (or upstream) dropping the connection right after it is a consequence
    # whose timing varies, so it is not appended.
    in_band_error = call.meter is not None and call.meter.parser.error is not None
    if flow.error is not None and not in_band_error and not _ended_cleanly(call):
        error = f"{error}; {flow.error.msg}" if error else flow.error.msg
    if interrupted:
        error = f"{error}; {interrupted}" if error else interrupted
    api_known = call.route.api != apis.OTHER  # a non-model call's bodies are never kept (llm_record=all)
    ended = response.timestamp_end if response is not None and response.timestamp_end else now
    record = Record(
        request_id=flow.id,
        ts=datetime.fromtimestamp(started, UTC),
        duration_ms=_ms(ended - started),
        ttft_ms=_ms(first_byte - started) if first_byte else None,
        provider=call.route.provider.name,
        api=call.route.api,
        method=request.method,
        path=call.path,
        upstream_url=None if call.local else mask_url(request.url),
        model=call.model,
        response_model=response_model,
        key_id=call.key_id,
        streaming=call.streaming,
        status=status,
        error=error,
        **token_columns(usage),
        request_body=call.request_body if log_bodies and api_known else None,
        response_body=body if log_bodies and api_known else None,
        client_addr=flow.client_conn.peername[0] if flow.client_conn.peername else None,
    )
    return record, Outcome(usage, response_model)


def _ended_cleanly(call: Call) -> bool:
    """The stream reached its provider's end marker ([DONE], message_stop, ...) before the
    connection closed: a client hanging up after reading it (SDKs do) lost nothing."""
    return call.meter is not None and getattr(call.meter.parser, "complete", False)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def comment(record: Record) -> str:
    """The line mitmweb shows for a metered flow: `gpt-4o-mini · 1,204→312 tok · $0.00037`."""
    model = record.response_model or record.model or record.api or "?"
    parts = [model]
    if record.input_tokens is not None or record.output_tokens is not None:
        parts.append(f"{record.input_tokens or 0:,}→{record.output_tokens or 0:,} tok")
    parts.append(_usd(record.cost_usd))
    if record.error:
        parts.append(record.error[:80])
    return " · ".join(parts)


def _usd(amount: Decimal | None) -> str:
    if amount is None:
        return "$?"
    if amount == 0:
        return "$0"
    return f"${amount:.2f}" if amount >= 1 else f"${amount:.4g}"  # 4 significant digits below $1
