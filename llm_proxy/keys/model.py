"""Virtual keys: what keys.toml holds and how a presented secret is checked.

keys.toml stores only a SHA-256 of each secret. Secrets are 256 random bits,
so a plain hash is as strong as a slow one here (nothing to brute-force) and
keeps the check to microseconds on the hot path. Lookup is by hash, confirmed
with a constant-time comparison.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from ..config.errors import ConfigError

SECRET_PREFIX = "llmp-"
PERIODS = ("1d", "7d", "30d", "monthly")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_FIELDS = {
    "hash", "prefix", "created", "disabled", "expires", "rpm", "tpm", "parallel", "budget", "period", "models",
}


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # surrogateescape: a header with bytes that are not UTF-8 (mitmproxy decodes it so)
    # hashes as the bytes it was, to a key nobody has, rather than failing the hook.
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"key name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class VirtualKey:
    name: str
    hash: str
    prefix: str = ""
    created: datetime | None = None
    disabled: bool = False
    expires: datetime | None = None
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None
    budget: Decimal | None = None  # USD per period
    period: str = "monthly"
    models: tuple[str, ...] = ()  # globs; empty: every model

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def allows_model(self, model: str | None) -> bool:
        if not self.models or model is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def to_toml(self) -> dict[str, Any]:
        """The table written to keys.toml (None fields left out)."""
        table: dict[str, Any] = {"hash": self.hash, "prefix": self.prefix}
        for field in ("created", "expires", "rpm", "tpm", "parallel", "budget", "models"):
            value = getattr(self, field)
            if value not in (None, ()):
                table[field] = list(value) if field == "models" else value
        if self.budget is not None or self.period != "monthly":
            table["period"] = self.period
        if self.disabled:
            table["disabled"] = True
        return table


def period_start(period: str, now: datetime) -> datetime:
    """Start of the budget window containing `now`: calendar month (UTC) or rolling days."""
    if period == "monthly":
        return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return now - timedelta(days=int(period.rstrip("d")))


def parse_expires(value: object, where: str) -> datetime | None:
    """A TOML/CLI date means the key works through that whole day (UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value or " " in value else date.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{where}: expires {value!r} is not a date (2026-12-31) or datetime") from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value + timedelta(days=1), time(0), UTC)
    raise ConfigError(f"{where}: expires must be a date or datetime")


def _positive_int(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where} must be a positive whole number")
    return value


def parse_key(name: str, table: Mapping[str, Any]) -> VirtualKey:
    where = f"[keys.{name}]"
    check_name(name)
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    digest = table.get("hash")
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ConfigError(f"{where}: hash must be 'sha256:' + 64 hex digits (made by `llm-proxy keys create`)")
    budget = table.get("budget")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, Decimal, float)):
            raise ConfigError(f"{where}.budget must be a non-negative amount of USD")
        budget = Decimal(str(budget))
        if not budget.is_finite() or budget < 0:
            raise ConfigError(f"{where}.budget must be a non-negative amount of USD")
    period = table.get("period", "monthly")
    if period not in PERIODS:
        raise ConfigError(f"{where}.period must be one of {', '.join(PERIODS)}")
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}.models must be a list of model names or globs")
    created = table.get("created")
    disabled = table.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ConfigError(f"{where}.disabled must be true or false")
    return VirtualKey(
        name=name,
        hash=digest,
        prefix=str(table.get("prefix", "")),
        created=created if isinstance(created, datetime) else None,
        disabled=disabled,
        expires=parse_expires(table.get("expires"), where),
        rpm=_positive_int(table.get("rpm"), f"{where}.rpm"),
        tpm=_positive_int(table.get("tpm"), f"{where}.tpm"),
        parallel=_positive_int(table.get("parallel"), f"{where}.parallel"),
        budget=budget,
        period=period,
        models=tuple(models),
    )


class KeyRing:
    """The keys in force; finds the key of a presented secret."""

    def __init__(self, keys: Iterable[VirtualKey] = ()) -> None:
        self.by_name: dict[str, VirtualKey] = {k.name: k for k in keys}
        self._by_hash = {k.hash: k for k in self.by_name.values()}

    def __len__(self) -> int:
        return len(self.by_name)

    def find(self, secret: str) -> VirtualKey | None:
        return self.find_hash(hash_secret(secret))

    def find_hash(self, digest: str) -> VirtualKey | None:
        """The key whose secret hashes to `digest` (as hash_secret makes it)."""
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.hash, digest):
            return None
        return key


def parse_keyring(data: Mapping[str, Any], where: str) -> KeyRing:
    tables = data.get("keys", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [keys] must hold [keys.NAME] tables")
    unknown = set(data) - {"keys"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level entries {sorted(unknown)}")
    keys = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: keys.{name} must be a table")
        try:
            keys.append(parse_key(name, table))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    hashes = [k.hash for k in keys]
    if len(set(hashes)) != len(hashes):
        raise ConfigError(f"{where}: two keys share one secret hash")
    return KeyRing(keys)
