"""Which webhook URLs the proxy may POST to: no loopback, private, link-local or metadata hosts.

A webhook URL comes from a client header, so it is untrusted: without this check
a client could make the proxy POST job results into the proxy's own network
(a cloud metadata service, an admin port on 127.0.0.1). The host is resolved
(off the event loop) and EVERY address it resolves to must be a global unicast
address; the delivery then connects to the address that was checked (pinned),
so a DNS answer that changes between the check and the connection cannot
sneak a private address in. The same check runs at submission (400) and
again at each delivery (DNS can change in between).

Numeric hosts in every spelling the C resolver accepts (decimal `2130706433`,
octal `0177.0.0.1`, hex `0x7f.1`, short `127.1`) are read the way the
connection would read them (inet_aton), and IPv6 addresses that embed an IPv4
one (IPv4-mapped `::ffff:127.0.0.1`, IPv4-compatible, 6to4, NAT64, Teredo) are
judged by the embedded address too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata services outside the private/link-local ranges (Alibaba's 100.100.100.200 is in
# the shared 100.64/10 range, which is not global anyway; listed for the message).
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200",
                                                 "fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class WebhookURLError(ValueError):
    """The URL is unusable or points where the proxy must not send; the message says which."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (a vetted address) and what to say there (Host, SNI)."""

    scheme: str
    host: str  # as written in the URL (for Host and SNI)
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]  # every address the host resolved to, all allowed

    def pinned_url(self) -> str:
        """The URL with the host replaced by the first checked address."""
        address = self.addresses[0]
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routable by some stacks)
        return ipaddress.IPv4Address(int(ip))
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why the proxy must not connect to `ip`, or None when it is a public unicast address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = refusal(inner)
        return f"{why} (embedded in {ip})" if why else None
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def numeric_host(host: str) -> IPAddress | None:
    """`host` read as an address the way a connection would read it, or None for a name.

    IPv4 goes through inet_aton, which accepts decimal, octal, hex and short forms
    (the forms getaddrinfo accepts too)."""
    text = host.strip("[]")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an http(s) URL, or WebhookURLError saying what is wrong."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise WebhookURLError(f"the webhook URL must be an http:// or https:// URL of at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookURLError("the webhook URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise WebhookURLError(f"the webhook URL does not parse: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookURLError("the webhook URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookURLError("the webhook URL must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookURLError("the webhook URL names no host")
    if parts.fragment:
        raise WebhookURLError("the webhook URL must not have a #fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port if port is not None else (443 if scheme == "https" else 80), path


async def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` (getaddrinfo in the loop's executor, never on the loop itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


async def check_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> Target:
    """Parse and resolve `url`; every address must be allowed (unless allow_private)."""
    scheme, host, port, path = parse_url(url)
    literal = numeric_host(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await resolver(host, port)
        except (OSError, UnicodeError) as e:
            raise WebhookURLError(f"the webhook host {host!r} does not resolve ({e})") from None
        if not addresses:
            raise WebhookURLError(f"the webhook host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise WebhookURLError(f"the webhook host {host!r} resolved to {address!r}, not an address") from None
            why = refusal(ip)
            if why is not None:
                raise WebhookURLError(
                    f"the webhook host {host!r} is refused: {why}; webhooks go only to public addresses "
                    "(the proxy's operator can set llm_webhook_allow_private=true)")
    return Target(scheme, host, port, path, tuple(addresses))
