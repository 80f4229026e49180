"""The webhook URL checker on random input: it never raises anything but WebhookURLError, never
lets a private address through in any spelling, and pins the address it checked."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from llm_proxy.jobs.ssrf import WebhookURLError, check_url, refusal

PRIVATE_V4 = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8")]


def spellings(ip: ipaddress.IPv4Address) -> st.SearchStrategy[str]:
    """The ways a URL can name `ip` that a connection would read as `ip`."""
    n = int(ip)
    a, b, c, d = ip.packed
    return st.sampled_from([
        str(ip), str(n), hex(n), f"0{n:o}", f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}",
        f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}", f"0{a:o}.0{b:o}.0{c:o}.0{d:o}", f"[::ffff:{ip}]",
        f"[::ffff:{(a << 8) | b:x}:{(c << 8) | d:x}]", f"[2002:{(a << 8) | b:x}:{(c << 8) | d:x}::1]",
        f"[64:ff9b::{ip}]",
    ])


def private_v4() -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.sampled_from(PRIVATE_V4).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(ipaddress.IPv4Address))


async def _never(host: str, port: int) -> list[str]:
    raise OSError("names are not resolved in this test")


@given(private_v4().flatmap(spellings), st.sampled_from(["http", "https"]), st.integers(1, 65535))
def test_a_private_address_is_refused_in_every_spelling(host: str, scheme: str, port: int) -> None:
    try:
        target = asyncio.run(check_url(f"{scheme}://{host}:{port}/hook", allow_private=False, resolver=_never))
    except WebhookURLError:
        return
    raise AssertionError(f"{host} was let through as {target.addresses}")


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(lambda ip: refusal(ip) is None)
       .flatmap(lambda ip: st.tuples(st.just(ip), spellings(ip))))
def test_a_public_address_is_accepted_and_pinned(case: tuple[ipaddress.IPv4Address, str]) -> None:
    ip, host = case
    target = asyncio.run(check_url(f"http://{host}/x", allow_private=False, resolver=_never))
    pinned = ipaddress.ip_address(target.addresses[0])
    assert pinned == ip or getattr(pinned, "ipv4_mapped", None) == ip or refusal(pinned) is None


addresses = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                      st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)).map(str)


@given(st.text(max_size=80) | st.builds(lambda h, p: f"http://{h}{p}", st.text(max_size=30), st.text(max_size=20)),
       st.lists(addresses, min_size=1, max_size=3))
def test_any_url_is_refused_cleanly_or_every_address_is_public(url: str, resolved: list[str]) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return resolved

    try:
        target = asyncio.run(check_url(url, allow_private=False, resolver=resolver))
    except WebhookURLError:
        return
    assert target.scheme in ("http", "https")
    assert all(refusal(ipaddress.ip_address(a)) is None for a in target.addresses)
