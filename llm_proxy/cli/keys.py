"""`llm-proxy keys ...`: create, list, change, rotate and remove virtual keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..keys import admin
from ..keys.admin import KeyFieldError
from ..keys.model import PERIODS
from ..config.errors import ConfigError
from ..keys.dbstore import DB, open_store
from ..keys.store import FileStore, read_keyring


def keys_file(args: argparse.Namespace) -> Path:
    return Path(args.keys_file or os.environ.get("LLM_PROXY_KEYS") or "keys.toml")


def keys_store(args: argparse.Namespace) -> admin.KeyStore:
    """--db URL (table llm_keys), else --keys-file, else $LLM_PROXY_KEYS ("db": $DATABASE_URL), else keys.toml."""
    url = getattr(args, "db", None)
    if url is None and not args.keys_file and os.environ.get("LLM_PROXY_KEYS") == DB:
        url = os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigError("LLM_PROXY_KEYS=db needs DATABASE_URL (postgresql://...), or pass --db URL")
    if url is not None:
        store = open_store(DB, url)
        assert store is not None
        return store
    return FileStore(keys_file(args))


def _argument(field: str) -> Callable[[str], Any]:
    """An argparse type that parses with the keys API's own parser (one message for both)."""
    def parse(text: str) -> Any:
        try:
            return admin.parse_field(field, text)
        except KeyFieldError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = field  # argparse names the type in some messages
    return parse


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option not given is absent, so `--rpm none` (remove) differs from no --rpm (keep).
    flags = parser.add_argument_group("limits").add_argument
    flags("--rpm", type=_argument("rpm"), metavar="N", default=argparse.SUPPRESS, help="requests per minute")
    flags("--tpm", type=_argument("tpm"), metavar="N", default=argparse.SUPPRESS,
          help="tokens per minute (counted from real usage)")
    flags("--parallel", type=_argument("parallel"), metavar="N", default=argparse.SUPPRESS,
          help="concurrent requests")
    flags("--budget", type=_argument("budget"), metavar="USD", default=argparse.SUPPRESS,
          help="spend allowed per period")
    flags("--period", type=_argument("period"), metavar="{" + ",".join(PERIODS) + "}", default=argparse.SUPPRESS,
          help="budget period (default monthly)")
    flags("--models", nargs="+", metavar="GLOB", default=argparse.SUPPRESS,
          help="allowed models (globs), e.g. 'gpt-4o*' 'claude-*'; 'none' allows every model")
    flags("--expires", type=_argument("expires"), metavar="DATE", default=argparse.SUPPRESS,
          help="last valid day (UTC), e.g. 2026-12-31, or an ISO datetime; 'none' removes it")


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {f: getattr(args, f) for f in admin.LIMIT_FIELDS if hasattr(args, f)}
    if "models" in changes:
        changes["models"] = admin.parse_models(changes["models"])
    return changes


def create(args: argparse.Namespace) -> int:
    _, secret = admin.create_key(keys_store(args), args.name, _changes(args))
    print(secret)
    print(f"created key {args.name!r}; the secret above is shown only this once", file=sys.stderr)
    return 0


def set_limits(args: argparse.Namespace) -> int:
    admin.change_key(keys_store(args), args.name, _changes(args))
    print(f"updated key {args.name!r}", file=sys.stderr)
    return 0


def _toggle(args: argparse.Namespace, disabled: bool) -> int:
    admin.change_key(keys_store(args), args.name, {}, disabled=disabled)
    print(f"{'disabled' if disabled else 'enabled'} key {args.name!r}", file=sys.stderr)
    return 0


def rotate(args: argparse.Namespace) -> int:
    _, secret = admin.rotate_key(keys_store(args), args.name)
    print(secret)
    print(f"rotated key {args.name!r}; the old secret no longer works", file=sys.stderr)
    return 0


def delete(args: argparse.Namespace) -> int:
    admin.delete_key(keys_store(args), args.name)
    print(f"deleted key {args.name!r}", file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    now = admin.now()
    store = keys_store(args)
    entries = [admin.describe(key, now) for key in sorted(store.read().by_name.values(), key=lambda k: k.name)]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        mode = " (passthrough mode)" if isinstance(store, FileStore) else ""
        print(f"no keys in {store.describe()}{mode}", file=sys.stderr)
        return 0
    columns = ("name", "state", "prefix", "rpm", "tpm", "parallel", "budget", "period", "models", "expires")
    rows = [[_cell(e[c]) for c in columns] for e in entries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    for line in [list(columns), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0


def import_file(args: argparse.Namespace) -> int:
    """Copy a keys.toml into the store (normally the database: `keys import keys.toml --db URL`)."""
    source = Path(args.file)
    if not source.is_file():
        raise ConfigError(f"no keys file at {source}")
    store = keys_store(args)
    if isinstance(store, FileStore) and store.path.resolve() == source.resolve():
        raise ConfigError("import copies a keys file into another store; give --db URL (or LLM_PROXY_KEYS=db)")
    names = admin.import_keys(store, read_keyring(source), overwrite=args.replace)
    print(f"imported {len(names)} key(s) into {store.describe()}: {', '.join(names) or '-'}", file=sys.stderr)
    return 0


def _cell(value: object) -> str:
    if value is None or value == []:
        return "-"
    return ",".join(value) if isinstance(value, list) else str(value)


_KEYS_FILE_HELP = "keys file (default: $LLM_PROXY_KEYS, else ./keys.toml)"


class _ActionParser(argparse.ArgumentParser):
    """A `keys ACTION` parser that also takes `--keys-file` after the action
    (`keys create NAME --keys-file F` as well as `keys --keys-file F create NAME`).
    Its default is SUPPRESS, so a value given before the action is kept when none follows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--keys-file", metavar="PATH", default=argparse.SUPPRESS, help=_KEYS_FILE_HELP)


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="virtual keys (keys.toml, or table llm_keys with --db)")
    keys.add_argument("--keys-file", metavar="PATH", help=_KEYS_FILE_HELP)
    db_help = ("keep keys in table llm_keys of this PostgreSQL database (shared by several proxies "
               "running with llm_keys=db); also LLM_PROXY_KEYS=db with $DATABASE_URL")
    keys.add_argument("--db", metavar="URL", help=db_help)
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_ActionParser)

    p = actions.add_parser("import", help="copy a keys.toml into the database (hashes only), all or nothing")
    p.add_argument("file", metavar="KEYS_TOML")
    p.add_argument("--replace", action="store_true", help="overwrite keys the database already has by name")
    p.set_defaults(handler=import_file)

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
    for action in actions.choices.values():
        action.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=db_help)
