"""The SQL of one usage report: one grouped SELECT per piece of the window (plan.py),
added up with their signs by an outer GROUP BY.

Every piece yields the group_by fields, a `bucket` (the hour or day a `day`/`hour`
group needs, else NULL) and the measures; PostgreSQL sums cost_usd as numeric,
SQLite as `cost_units` (the rollups' whole 10^-12 USD) plus `cost_text` (the rows'
decimal text, summed exactly by the registered decimal_sum aggregate), with `odd`
counting rollup costs that did not fit (the caller then asks the rows alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .params import Filters
from .plan import Piece

DIM_COLUMNS = {"key": "key_id", "model": "model", "response_model": "response_model", "provider": "provider",
               "api": "api", "status": "status"}
NULL_BITS = {"key_id": 0, "model": 1, "response_model": 2, "provider": 3, "api": 4, "status": 5}
TOKENS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_FILTERS = (("key", "key_id"), ("model", "model"), ("provider", "provider"))


def usage_sql(table: str, pieces: Sequence[Piece], group_by: tuple[str, ...], filters: Filters, *,
              postgres: bool) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    mark = (lambda n: f"%({n})s") if postgres else (lambda n: f":{n}")
    for name, _ in _FILTERS:
        if getattr(filters, name) is not None:
            params[name] = getattr(filters, name)
    bucket = "hour" if "hour" in group_by else "day" if "day" in group_by else None
    dims = [DIM_COLUMNS[f] for f in group_by if f in DIM_COLUMNS]
    selects = []
    for i, piece in enumerate(pieces):
        lo, hi = f"lo{i}", f"hi{i}"
        params[lo], params[hi] = _bound(piece, piece.lo, postgres), _bound(piece, piece.hi, postgres)
        if postgres:
            selects.append(_postgres_piece(table, piece, dims, bucket, mark(lo), mark(hi), params))
        else:
            selects.append(_sqlite_piece(table, piece, dims, bucket, mark(lo), mark(hi), params))
    outer = [f"{DIM_COLUMNS[f]} AS {f}" for f in group_by if f in DIM_COLUMNS]
    if "day" in group_by:
        day = ("date_trunc('day', bucket)" if postgres else "substr(bucket, 1, 10)") if bucket == "hour" else "bucket"
        outer.append(f"{day} AS day")
    if "hour" in group_by:
        outer.append("bucket AS hour")
    cost = ["sum(cost_usd) AS cost_usd"] if postgres else [
        "sum(cost_units) AS cost_units", "decimal_sum(cost_text, 1) AS cost_text", "sum(odd) AS odd"]
    cast = "::bigint" if postgres else ""
    select = ", ".join([*outer, *(f"sum({m}){cast} AS {m}" for m in ("requests", "errors", *TOKENS)), *cost,
                        f"sum(unpriced){cast} AS unpriced"])
    group = f" GROUP BY {', '.join(str(i) for i in range(1, len(outer) + 1))}" if outer else ""
    return f"SELECT {select} FROM ({' UNION ALL '.join(selects)}) AS u{group}", params


def final_json_sql(table: str, pieces: Sequence[Piece], group_by: tuple[str, ...], filters: Filters
                   ) -> tuple[str, dict[str, Any]]:
    """PostgreSQL: one row of the totals and `groups`, the contract's JSON array of the groups
    (sorted by cost descending, then by the group fields in code-point order, NULLs last;
    cost_usd as exact decimal text without trailing zeros), written by the server."""
    inner, params = usage_sql(table, pieces, group_by, filters, postgres=True)
    fields, order = [], ["g.cost_usd DESC"]  # g.: not the text of the same name below
    for f in group_by:
        value = (f"to_char({f}, 'YYYY-MM-DD')" if f == "day" else
                 f"to_char({f}, 'YYYY-MM-DD\"T\"HH24:00Z')" if f == "hour" else f)
        fields.append(f"{value} AS {f}")
        order.append(f"{value} COLLATE \"C\" NULLS LAST" if f != "status" else f"{value} NULLS LAST")
    fields += [*("requests", "errors", *TOKENS), "trim_scale(cost_usd)::text AS cost_usd", "unpriced"]
    measures = ("requests", "errors", *TOKENS, "cost_usd", "unpriced")
    # json_agg over a sorted subquery keeps its order (a plain subquery scan feeds the aggregate
    # in order; the tests check the order too).
    sql = (f"WITH g AS ({inner}) SELECT "
           + ", ".join(f"sum({m}) AS {m}" for m in measures)
           + f", coalesce((SELECT json_agg(j) FROM (SELECT {', '.join(fields)} FROM g WHERE requests <> 0 "
           f"ORDER BY {', '.join(order)}) AS j), '[]')::text AS groups FROM g")
    return sql, params


def _bound(piece: Piece, moment: Any, postgres: bool) -> Any:
    if postgres:
        return moment
    if piece.source == "hourly":
        return moment.strftime("%Y-%m-%dT%H")
    if piece.source == "daily":
        return moment.strftime("%Y-%m-%d")
    return moment.isoformat()


def _where(column: str, lo: str, hi: str, params: dict[str, Any], mark_of: str, rollup_sqlite: bool) -> str:
    where = f"{column} >= {lo} AND {column} < {hi}"
    for name, col in _FILTERS:
        if name in params:
            where += f" AND {col} = {mark_of.format(name)}"
            if rollup_sqlite:
                where += f" AND NOT (nulls & {1 << NULL_BITS[col]})"
    return where


def _postgres_piece(table: str, piece: Piece, dims: list[str], bucket: str | None, lo: str, hi: str,
                    params: dict[str, Any]) -> str:
    s = "-" if piece.sign < 0 else ""
    if piece.source == "raw":
        b = f"date_trunc('{bucket}', ts AT TIME ZONE 'UTC')" if bucket else "NULL::timestamp"
        measures = [f"{s}count(*) AS requests",
                    f"{s}count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors",
                    *(f"{s}coalesce(sum({m}), 0) AS {m}" for m in TOKENS),
                    f"{s}coalesce(sum(cost_usd), 0) AS cost_usd",
                    f"{s}count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced"]
        source, column = table, "ts"
    else:
        column = "hour" if piece.source == "hourly" else "day"
        local = f"{column} AT TIME ZONE 'UTC'"
        b = (local if bucket == "hour" or column == "day" else f"date_trunc('day', {local})") if bucket \
            else "NULL::timestamp"
        # Rollup rows go to the outer GROUP BY as they are: grouping them here too costs a second pass.
        measures = [f"{s}{m} AS {m}" for m in ("requests", "errors", *TOKENS, "cost_usd", "unpriced")]
        where = _where(column, lo, hi, params, "%({})s", False)
        return f"SELECT {', '.join([*dims, b + ' AS bucket', *measures])} FROM {table}_{piece.source} WHERE {where}"
    where = _where(column, lo, hi, params, "%({})s", False)
    group = ", ".join(str(i) for i in range(1, len(dims) + 2))
    return f"SELECT {', '.join([*dims, b + ' AS bucket', *measures])} FROM {source} WHERE {where} GROUP BY {group}"


def _sqlite_piece(table: str, piece: Piece, dims: list[str], bucket: str | None, lo: str, hi: str,
                  params: dict[str, Any]) -> str:
    s = "-" if piece.sign < 0 else ""
    if piece.source == "raw":
        b = f"substr(ts, 1, {13 if bucket == 'hour' else 10})" if bucket else "NULL"
        columns = list(dims)
        measures = [f"{s}count(*) AS requests",
                    f"{s}sum(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END) AS errors",
                    *(f"{s}ifnull(sum({m}), 0) AS {m}" for m in TOKENS),
                    "0 AS cost_units", f"decimal_sum(cost_usd, {piece.sign}) AS cost_text", "0 AS odd",
                    f"{s}sum(cost_usd IS NULL) AS unpriced"]
        source, column = table, "ts"
    else:
        column = "hour" if piece.source == "hourly" else "day"
        b = (column if bucket == "hour" or column == "day" else f"substr({column}, 1, 10)") if bucket else "NULL"
        columns = [f"CASE WHEN nulls & {1 << NULL_BITS[d]} THEN NULL ELSE {d} END AS {d}" for d in dims]
        measures = [*(f"{s}sum({m}) AS {m}" for m in ("requests", "errors", *TOKENS, "cost_units")),
                    "NULL AS cost_text", "sum(cost_odd) AS odd", f"{s}sum(unpriced) AS unpriced"]
        source = f"{table}_{piece.source}"
    where = _where(column, lo, hi, params, ":{}", piece.source != "raw")
    group = ", ".join(str(i) for i in range(1, len(dims) + 2))
    return f"SELECT {', '.join([*columns, b + ' AS bucket', *measures])} FROM {source} WHERE {where} GROUP BY {group}"
