"""Host names as the connection will read them, so spelling cannot dodge the meter.

In regular mode a flow is metered when its host is a provider's. Matching by
spelling let `127.1`, `2130706433`, `0x7f.0.0.1`, `[::ffff:127.0.0.1]` or
`localhost` reach a provider configured at 127.0.0.1 unmetered and unchecked,
though the connection goes to the very same address. So both sides are put in
one canonical form first: IP literals in every form the resolver accepts
become their standard text, all of loopback (127.0.0.0/8, ::1, localhost and
*.localhost) is one host, names are lower-cased without a trailing dot.

What this cannot see: a name that DNS (or /etc/hosts) resolves to a
provider's address. Resolving on the hot path would block; operators who need
that closed use `llm_only_providers`, which refuses every non-provider host.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Protocol

LOOPBACK = "loopback"


def canonical_host(host: str) -> str:
    """The one spelling of `host` that equal destinations share."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost" or host.endswith(".localhost"):
        return LOOPBACK
    address = _ip(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return LOOPBACK
    return str(address)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return None
    if not host or not (host[0].isdigit()):
        return None  # names never start with a digit in the forms inet_aton takes
    try:
        # inet_aton takes every IPv4 form a connect() does: 127.1, 2130706433, 0x7f.1, 0177.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError, UnicodeError):
        return None


def canonical_host_port(entry: str) -> tuple[str, int | None]:
    """A providers.toml `hosts` entry ("host" or "host:port", IPv6 in brackets) canonicalised."""
    entry = entry.strip()
    host, port = entry, None
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        host = inside
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif entry.count(":") == 1:
        name, _, text = entry.partition(":")
        if text.isdigit():
            host, port = name, int(text)
    return canonical_host(host), port


class _Providers(Protocol):
    def for_host(self, host: str, port: int) -> object | None: ...


def is_provider_host(providers: _Providers, host: str, port: int) -> bool:
    return providers.for_host(host, port) is not None
