"""The `llm-proxy` command line. Errors exit non-zero with one plain sentence on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from ..config.errors import ConfigError
from . import db, doctor, keys, prices, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-proxy", description="Manage llm-proxy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys.register(commands)
    db.register(commands)
    doctor.register(commands)
    prices.register(commands)
    report.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError) as e:
        print(f"llm-proxy: {e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:  # `keys --db URL ...`: an unreachable or refusing database
        print(f"llm-proxy: database error: {str(e).strip() or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
