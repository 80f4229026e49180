"""`llm-proxy report`: the usage API's figures, from the database directly.

The same parameter parsing and the same queries as `/_llm/api/usage`
(llm_proxy.control), so a report and the API never disagree.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

import psycopg

from ..control.params import BadParameter, usage_query
from ..control.reports import MEASURES, Reports
from ..paths import default_db_url
from ..storage.dsn import check_table_name, parse_db_url
from ..storage.schema import DEFAULT_TABLE


def report(args: argparse.Namespace) -> int:
    params = {name: [value] for name, value in (
        ("since", args.since), ("until", args.until), ("group_by", args.by), ("key", args.key),
        ("model", args.model), ("provider", args.provider)) if value}
    try:
        query = usage_query(params, datetime.now(UTC))
    except BadParameter as e:
        flag = {"group_by": "by"}.get(e.name, e.name)
        raise ValueError(f"--{flag}: {str(e).removeprefix(e.name + ': ')}") from None
    database = parse_db_url(args.db or default_db_url())
    reports = Reports(database, check_table_name(args.table))
    try:
        reports.connect()
        answer = reports.usage(query)
    except (sqlite3.Error, psycopg.Error) as e:
        raise ValueError(f"cannot read table {args.table} of {database.describe()}: {e}") from None
    finally:
        reports.close()
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return 0
    columns = [*query.group_by, *MEASURES]
    rows = answer["groups"] if query.group_by else []
    totals = {**{field: "" for field in query.group_by}, **answer["totals"]}
    if query.group_by:
        totals[query.group_by[0]] = "TOTAL"
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in [*rows, totals]:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return 0
    print(f"usage from {answer['since']} until {answer['until']}")
    table = [columns, *([_cell(row[c]) for c in columns] for row in [*rows, totals])]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    numeric = {c for c in MEASURES}
    for index, line in enumerate(table):
        cells = [cell.rjust(w) if columns[i] in numeric and index else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())
    return 0


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="usage and cost, as /_llm/api/usage reports them")
    p.add_argument("--since", metavar="T", help="ISO time or relative (90m, 24h, 7d; default 30d)")
    p.add_argument("--until", metavar="T", help="ISO time or relative (default now)")
    p.add_argument("--by", metavar="FIELDS",
                   help="comma list of key, model, response_model, provider, api, status, day, hour")
    p.add_argument("--key", metavar="NAME", help="only this key (its name, or passthrough fingerprint)")
    p.add_argument("--model", metavar="M", help="only this model (as requested)")
    p.add_argument("--provider", metavar="P", help="only this provider")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--db", metavar="URL", help="database (default: $DATABASE_URL, else the embedded SQLite file)")
    p.add_argument("--table", metavar="NAME", default=DEFAULT_TABLE, help=f"table (default {DEFAULT_TABLE})")
    p.set_defaults(handler=report)
