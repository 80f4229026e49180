"""`llm-proxy keys ...`: create, list, change, rotate and remove virtual keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError
from ..keys.model import PERIODS, VirtualKey, check_name, hash_secret, new_secret, parse_expires
from ..keys.store import editing, read_keyring

NONE = "none"  # `keys set NAME --rpm none` removes a limit


def keys_file(args: argparse.Namespace) -> Path:
    return Path(args.keys_file or os.environ.get("LLM_PROXY_KEYS") or "keys.toml")


def _limit(text: str) -> int | None:
    if text.lower() == NONE:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or 'none')") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("limits must be positive (use 'none' to remove one)")
    return value


def _budget(text: str) -> Decimal | None:
    if text.lower() == NONE:
        return None
    try:
        value = Decimal(text.lstrip("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of USD, e.g. 25 or 12.50") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError("a budget is a non-negative amount of USD")
    return value


def _expires(text: str) -> datetime | None:
    if text.lower() == NONE:
        return None
    try:
        return parse_expires(text, "--expires")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_LIMIT_FIELDS = ("rpm", "tpm", "parallel", "budget", "period", "models", "expires")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option not given is absent, so `--rpm none` (remove) differs from no --rpm (keep).
    flags = parser.add_argument_group("limits").add_argument
    flags("--rpm", type=_limit, metavar="N", default=argparse.SUPPRESS, help="requests per minute")
    flags("--tpm", type=_limit, metavar="N", default=argparse.SUPPRESS,
          help="tokens per minute (counted from real usage)")
    flags("--parallel", type=_limit, metavar="N", default=argparse.SUPPRESS, help="concurrent requests")
    flags("--budget", type=_budget, metavar="USD", default=argparse.SUPPRESS, help="spend allowed per period")
    flags("--period", choices=PERIODS, default=argparse.SUPPRESS, help="budget period (default monthly)")
    flags("--models", nargs="+", metavar="GLOB", default=argparse.SUPPRESS,
          help="allowed models (globs), e.g. 'gpt-4o*' 'claude-*'; 'none' allows every model")
    flags("--expires", type=_expires, metavar="DATE", default=argparse.SUPPRESS,
          help="last valid day (UTC), e.g. 2026-12-31, or an ISO datetime; 'none' removes it")


def _changed(args: argparse.Namespace, key: VirtualKey) -> VirtualKey:
    changes: dict[str, Any] = {f: getattr(args, f) for f in _LIMIT_FIELDS if hasattr(args, f)}
    if any(not pattern.strip() for pattern in changes.get("models", ())):
        raise ConfigError("--models: a model name or glob cannot be empty")
    if "models" in changes:
        changes["models"] = () if [m.lower() for m in changes["models"]] == [NONE] else tuple(changes["models"])
    return replace(key, **changes)


def create(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    secret = new_secret()
    with editing(keys_file(args)) as keys:
        if name in keys:
            raise ConfigError(f"key {name!r} exists; use `keys rotate` for a new secret or `keys set` for limits")
        key = VirtualKey(name=name, hash=hash_secret(secret), prefix=secret[:9], created=_now())
        keys[name] = _changed(args, key)
    print(secret)
    print(f"created key {name!r}; the secret above is shown only this once", file=sys.stderr)
    return 0


def set_limits(args: argparse.Namespace) -> int:
    with editing(keys_file(args)) as keys:
        keys[args.name] = _changed(args, _existing(keys, args.name))
    print(f"updated key {args.name!r}", file=sys.stderr)
    return 0


def _toggle(args: argparse.Namespace, disabled: bool) -> int:
    with editing(keys_file(args)) as keys:
        keys[args.name] = replace(_existing(keys, args.name), disabled=disabled)
    print(f"{'disabled' if disabled else 'enabled'} key {args.name!r}", file=sys.stderr)
    return 0


def rotate(args: argparse.Namespace) -> int:
    secret = new_secret()
    with editing(keys_file(args)) as keys:
        keys[args.name] = replace(_existing(keys, args.name), hash=hash_secret(secret), prefix=secret[:9])
    print(secret)
    print(f"rotated key {args.name!r}; the old secret no longer works", file=sys.stderr)
    return 0


def delete(args: argparse.Namespace) -> int:
    with editing(keys_file(args)) as keys:
        _existing(keys, args.name)
        del keys[args.name]
    print(f"deleted key {args.name!r}", file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    now = _now()
    entries = []
    for key in sorted(read_keyring(keys_file(args)).by_name.values(), key=lambda k: k.name):
        state = "disabled" if key.disabled else "expired" if key.expired(now) else "active"
        entry = {
            "name": key.name, "state": state, "prefix": key.prefix, "rpm": key.rpm, "tpm": key.tpm,
            "parallel": key.parallel, "budget": str(key.budget) if key.budget is not None else None,
            "period": key.period if key.budget is not None else None, "models": list(key.models),
            "expires": key.expires.isoformat() if key.expires else None,
            "created": key.created.isoformat() if key.created else None,
        }
        entries.append(entry)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no keys in {keys_file(args)} (passthrough mode)", file=sys.stderr)
        return 0
    columns = ("name", "state", "prefix", "rpm", "tpm", "parallel", "budget", "period", "models", "expires")
    rows = [[_cell(e[c]) for c in columns] for e in entries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    for line in [list(columns), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0


def _cell(value: object) -> str:
    if value is None or value == []:
        return "-"
    return ",".join(value) if isinstance(value, list) else str(value)


def _existing(keys: dict[str, VirtualKey], name: str) -> VirtualKey:
    if name not in keys:
        raise ConfigError(f"no key named {name!r}; `llm-proxy keys list` shows the keys")
    return keys[name]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="virtual keys (keys.toml)")
    keys.add_argument(
        "--keys-file", metavar="PATH", help="keys file (default: $LLM_PROXY_KEYS, else ./keys.toml)"
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("create", help="create a key and print its secret once")
    p.add_argument("name")
    _add_limit_flags(p)
    p.set_defaults(handler=create)

    p = actions.add_parser("set", help="change a key's limits ('none' removes one)")
    p.add_argument("name")
    _add_limit_flags(p)
    p.set_defaults(handler=set_limits)

    p = actions.add_parser("list", help="list keys (never secrets)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=list_keys)

    for action, handler, text in (
        ("disable", lambda a: _toggle(a, True), "refuse a key (403) until enabled"),
        ("enable", lambda a: _toggle(a, False), "accept a disabled key again"),
        ("rotate", rotate, "new secret, same name, limits and spend history"),
        ("delete", delete, "remove a key"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(handler=handler)
