"""Managing virtual keys: the one validation and the one set of operations behind both
`llm-proxy keys ...` and the keys API (`/_llm/api/keys`).

Values arrive as CLI text ("60", "none", "$12.50") or as JSON values (60, null,
"12.50"); each field has one parser that takes either and raises KeyFieldError
with one message, so the same bad input gets the same words wherever it is typed.
Operations run on a key store (keys.store.FileStore for keys.toml, keys.dbstore.DbStore
for table llm_keys), each through its `editing()`: locked, read, changed, written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..config.errors import ConfigError
from .model import PERIODS, KeyRing, VirtualKey, check_name, hash_secret, new_secret, parse_expires
from .store import FileStore

NONE = "none"  # CLI text (and accepted JSON text) that removes a limit, like JSON null
LIMIT_FIELDS = ("rpm", "tpm", "parallel", "budget", "period", "models", "expires")


class KeyFieldError(ConfigError):
    """A bad value for one field of a key; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class KeyExists(ConfigError):
    pass


class NoSuchKey(ConfigError):
    pass


def _removes(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == NONE)


def parse_limit(field: str, value: object) -> int | None:
    """rpm, tpm, parallel: a positive whole number, or none/null to remove the limit."""
    if _removes(value):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise KeyFieldError(field, f"{value!r} is not a whole number (or 'none')") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise KeyFieldError(field, f"{value!r} is not a whole number (or 'none')")
    if value <= 0:
        raise KeyFieldError(field, "limits must be positive (use 'none' to remove one)")
    return value


def parse_budget(value: object) -> Decimal | None:
    """USD per period: 25, 12.50, "$12.50"; none/null removes it. Never a float's rounding."""
    if _removes(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise KeyFieldError("budget", f"{value!r} is not an amount of USD, e.g. 25 or 12.50")
    text = value.strip().lstrip("$") if isinstance(value, str) else str(value)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise KeyFieldError("budget", f"{value!r} is not an amount of USD, e.g. 25 or 12.50") from None
    if not amount.is_finite() or amount < 0:
        raise KeyFieldError("budget", "a budget is a non-negative amount of USD")
    return amount


def parse_period(value: object) -> str:
    if value is None:
        return "monthly"
    if value not in PERIODS:
        raise KeyFieldError("period", f"invalid choice: {value!r} (choose from {', '.join(PERIODS)})")
    return str(value)


def parse_models(value: object) -> tuple[str, ...]:
    """Allowed model globs; none/null/[] (or ["none"]) allows every model."""
    if _removes(value):
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) for m in value):
        raise KeyFieldError("models", "models must be a list of model names or globs")
    if any(not m.strip() for m in value):
        raise KeyFieldError("models", "a model name or glob cannot be empty")
    if [m.lower() for m in value] == [NONE]:
        return ()
    return tuple(value)


def parse_expiry(value: object) -> datetime | None:
    if _removes(value):
        return None
    if not isinstance(value, str):
        value = repr(value)  # a JSON number or list: refused with the same words as bad text
    try:
        # The message keeps the CLI's long-standing wording (tests and scripts match on it).
        return parse_expires(value, "--expires")
    except ConfigError as e:
        raise KeyFieldError("expires", str(e)) from None


def parse_field(field: str, value: object) -> Any:
    if field in ("rpm", "tpm", "parallel"):
        return parse_limit(field, value)
    if field == "budget":
        return parse_budget(value)
    if field == "period":
        return parse_period(value)
    if field == "models":
        return parse_models(value)
    if field == "expires":
        return parse_expiry(value)
    raise KeyFieldError(field, f"unknown field {field!r}; use {', '.join(LIMIT_FIELDS)}")


def parse_changes(values: Mapping[str, object]) -> dict[str, Any]:
    """Every given field parsed; the first bad one raises KeyFieldError naming it."""
    return {field: parse_field(field, value) for field, value in values.items()}


# --- operations on a key store -----------------------------------------------------------------

class KeyStore(Protocol):
    """Where keys live: keys.toml (FileStore) or the database (DbStore)."""

    def describe(self) -> str: ...

    def read(self) -> KeyRing: ...

    def editing(self) -> AbstractContextManager[dict[str, VirtualKey]]: ...


def as_store(store: KeyStore | Path) -> KeyStore:
    """A path is a keys file (what callers passed before there were other stores)."""
    return FileStore(store) if isinstance(store, Path) else store


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _existing(keys: dict[str, VirtualKey], name: str) -> VirtualKey:
    if name not in keys:
        raise NoSuchKey(f"no key named {name!r}; `llm-proxy keys list` shows the keys")
    return keys[name]


def create_key(store: KeyStore | Path, name: str, changes: Mapping[str, Any]) -> tuple[VirtualKey, str]:
    """A new key with `changes` (parsed) applied; returns it and its secret (shown once)."""
    check_name(name)
    secret = new_secret()
    with as_store(store).editing() as keys:
        if name in keys:
            raise KeyExists(f"key {name!r} exists; use `keys rotate` for a new secret or `keys set` for limits")
        key = replace(VirtualKey(name=name, hash=hash_secret(secret), prefix=secret[:9], created=now()), **changes)
        keys[name] = key
    return key, secret


def change_key(store: KeyStore | Path, name: str, changes: Mapping[str, Any], disabled: bool | None = None) -> VirtualKey:
    with as_store(store).editing() as keys:
        key = replace(_existing(keys, name), **changes)
        if disabled is not None:
            key = replace(key, disabled=disabled)
        keys[name] = key
    return key


def rotate_key(store: KeyStore | Path, name: str) -> tuple[VirtualKey, str]:
    secret = new_secret()
    with as_store(store).editing() as keys:
        key = keys[name] = replace(_existing(keys, name), hash=hash_secret(secret), prefix=secret[:9])
    return key, secret


def delete_key(store: KeyStore | Path, name: str) -> None:
    with as_store(store).editing() as keys:
        _existing(keys, name)
        del keys[name]


def key_state(key: VirtualKey, at: datetime) -> str:
    return "disabled" if key.disabled else "expired" if key.expired(at) else "active"


def describe(key: VirtualKey, at: datetime) -> dict[str, Any]:
    """A key as `keys list --json` and the keys API show it: never its hash or secret."""
    return {
        "name": key.name, "state": key_state(key, at), "prefix": key.prefix, "rpm": key.rpm, "tpm": key.tpm,
        "parallel": key.parallel, "budget": str(key.budget) if key.budget is not None else None,
        "period": key.period if key.budget is not None else None, "models": list(key.models),
        "expires": key.expires.isoformat() if key.expires else None,
        "created": key.created.isoformat() if key.created else None,
    }


def import_keys(store: KeyStore | Path, ring: KeyRing, *, overwrite: bool = False) -> list[str]:
    """Copy every key of `ring` (a keys.toml, already validated) into `store`, all or nothing.

    A name the store already has is refused (listing them) unless `overwrite`; a secret hash
    another key of the store holds under another name is always refused.
    """
    with as_store(store).editing() as keys:
        clashes = sorted(name for name in ring.by_name if name in keys)
        if clashes and not overwrite:
            raise KeyExists(f"the store already has key(s) {', '.join(clashes)}; "
                            "use --replace to overwrite them with the file's")
        owners = {k.hash: k.name for k in keys.values()}
        for key in ring.by_name.values():
            owner = owners.get(key.hash)
            if owner is not None and owner != key.name:
                raise KeyExists(f"key {key.name!r} has the same secret as the store's key {owner!r}")
        keys.update(ring.by_name)
    return sorted(ring.by_name)
