"""How a job's call reaches this proxy: its listening address for the mode that accepted the job.

Reverse mode: the stored path is sent to the listening port, which adds the
reverse target as for any client. Regular mode: the stored URL is sent through
the listening port as an HTTP proxy, in plain HTTP (no TLS to ourselves); the
addon restores the real scheme on the flow, and mitmproxy connects to the
provider over TLS as usual.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode

from .runner import Request
from .store import JobRow


def server_for(servers: Iterable[Any], spec: str) -> Any:
    """The listening server of mode `spec`, else one of the same kind (the port may differ after a restart)."""
    candidates = [s for s in servers if s.listen_addrs and isinstance(s.mode, (ReverseMode, RegularMode))]
    for server in candidates:
        if server.mode.full_spec == spec:
            return server
    kind = spec.split(":", 1)[0].split("@", 1)[0]
    return next((s for s in candidates if s.mode.type_name == kind), None)


def connectable(host: str) -> str:
    """A listening address as an address to connect to (a wildcard means this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1"
    return host


def call_request(job: JobRow, server: Any, headers: list[tuple[str, str]], path: str,
                 key_hash: str | None) -> Request:
    host, port = server.listen_addrs[0][:2]
    host = connectable(host)
    shown = f"[{host}]" if ":" in host else host
    if isinstance(server.mode, RegularMode):
        target = f"[{job.host}]" if ":" in job.host else job.host
        return Request(f"http://{target}:{job.port}{path}", headers, job.body, proxy=f"http://{shown}:{port}",
                       key_hash=key_hash, scheme=job.scheme)
    return Request(f"http://{shown}:{port}{path}", headers, job.body, key_hash=key_hash)
