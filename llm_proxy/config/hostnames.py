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
import re
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


_LABEL = re.compile(r"[a-z0-9*-]+")
_NAME_CHARS = "[a-z0-9-]"


def host_pattern(host: str) -> re.Pattern[str] | None:
    """The matcher of a wildcard `hosts` entry, None for a plain host; ValueError if it is unsafe.

    `*` stands for one or more letters, digits or hyphens inside ONE label, so
    `*.openai.azure.com` is any Azure resource, `bedrock-runtime.*.amazonaws.com` any region
    and `*-aiplatform.googleapis.com` any Vertex region. No `*` reaches across a dot
    (`a.b.openai.azure.com` is not `*.openai.azure.com`), the host must be a plain DNS name
    to match, and the last two labels must be literal, so no entry claims a whole domain.
    """
    if "*" not in host:
        return None
    labels = host.split(".")
    if len(labels) < 3 or any(not _LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"wildcard host {host!r}: labels of a-z, 0-9, '-' and '*' only, at least three of them")
    if any("*" in label for label in labels[-2:]):
        raise ValueError(f"wildcard host {host!r}: its last two labels must be literal (e.g. *.openai.azure.com)")
    parts = [f"{_NAME_CHARS}+".join(re.escape(piece) for piece in label.split("*")) for label in labels]
    return re.compile(r"\.".join(parts))


class _Providers(Protocol):
    def for_host(self, host: str, port: int) -> object | None: ...


def is_provider_host(providers: _Providers, host: str, port: int) -> bool:
    return providers.for_host(host, port) is not None
