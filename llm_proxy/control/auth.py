"""Who may call the control plane: the admin, a virtual key (for its own `/_llm/api/me`), or nobody.

A pure decision over the presented bearer token, the admin key option and the
client's address, so it is tested without a proxy. The admin key is compared
in constant time; a virtual key is found by its hash (keys.model.KeyRing).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from ..keys.model import KeyRing, VirtualKey

ADMIN_HINT = ("set llm_admin_key (or $LLM_PROXY_ADMIN_KEY) on the proxy and send it as "
              "'Authorization: Bearer <admin key>'")


@dataclass(frozen=True, slots=True)
class Caller:
    """An admitted caller: the admin (key is None) or one virtual key."""
    key: VirtualKey | None = None

    @property
    def admin(self) -> bool:
        return self.key is None


@dataclass(frozen=True, slots=True)
class Denied:
    status: int  # 401 or 403
    message: str


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def identify(token: str | None, admin_key: str, client_address: str | None, ring: KeyRing) -> Caller | Denied:
    """The caller behind a request to the control plane (before the path is considered)."""
    if token is not None and admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
        return Caller()
    virtual = ring.find(token) if token is not None else None
    if virtual is not None:
        return Caller(virtual)
    if not admin_key:
        if is_loopback(client_address):
            return Caller()  # no admin key set: this machine's own users are the admins
        return Denied(403, f"the control plane answers only loopback clients until an admin key is set: "
                           f"{ADMIN_HINT}")
    if token is None:
        return Denied(401, f"no admin key: send 'Authorization: Bearer <admin key>' ({ADMIN_HINT})")
    return Denied(401, "wrong admin key")


def authorize(caller: Caller | Denied, *, admin_only: bool) -> Denied | None:
    """None when `caller` may use the path; a virtual key may use only its own paths."""
    if isinstance(caller, Denied):
        return caller
    if admin_only and not caller.admin:
        assert caller.key is not None
        return Denied(403, f"key {caller.key.name!r} is a virtual key: it may call GET /_llm/api/me only; "
                           "admin paths need the admin key")
    return None
