"""The rollups beside the rows' table: an hourly and a daily level, kept by triggers in the
rows' own transactions, so a report over 30 days reads a few rollup rows per key and model
and day instead of every call, and can never disagree with the rows.

PostgreSQL 15+: rollup_postgres.sql (statement triggers with transition tables on the
table the proxy writes to, plain or partitioned by range). SQLite: row triggers built
here; SQLite has no decimal type, so costs are summed as whole 10^-12 USD (INTEGER,
exact up to 9.2 million USD per cell); a cost that does not fit (more than 12 decimal
places, or not decimal text) is counted in `cost_odd` and reports over it read the rows.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from pathlib import Path

import psycopg

from ..storage.schema import schema_for

logger = logging.getLogger(__name__)

ROLLUP_SQL = Path(__file__).with_name("rollup_postgres.sql")
_SCHEMA_LOCK = 0x6C6C6D70  # the writer's lock for applying DDL (storage/postgres.py)
_DDL_WORDS = re.compile(r"\b(llm_requests)")
PG_TRIGGERS = ("ins", "upd", "del", "trunc")
SQLITE_TRIGGERS = ("ins", "del", "upd")
COST_SCALE = 12  # SQLite rollups keep cost_usd as an INTEGER count of 10^-12 USD
_DIMS = ("key_id", "model", "response_model", "provider", "api", "status")


# --- PostgreSQL ------------------------------------------------------------------------

def drop_calls_table(conn: psycopg.Connection, table: str) -> None:
    """Drop a calls table with what the control plane keeps beside it (tests and benchmarks)."""
    conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_hourly, {table}_daily, {table}_rollup_gen, {table}_bodies "
                 "CASCADE")
    conn.execute(f"DROP FUNCTION IF EXISTS {table}_rollup_sync(), {table}_rollup_truncate(), "
                 f"{table}_rollup_rebuild(timestamptz, timestamptz), "
                 f"{table}_hourly_sync(), {table}_hourly_truncate() CASCADE")


def rollup_ready(conn: psycopg.Connection, table: str) -> bool:
    """Are both levels there with all their triggers? Otherwise reports read the rows alone."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL, "
        "(SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s))",
        (f"{table}_hourly", f"{table}_daily", f"{table}_rollup_gen", table,
         [f"{table}_rollup_{s}" for s in PG_TRIGGERS]),
    ).fetchone()
    return bool(row and row[0] and row[1] == len(PG_TRIGGERS))


def ensure_rollup(conn: psycopg.Connection, table: str) -> bool:
    """Create the rows' table (schema.sql, unless it exists, e.g. partitioned) and, on
    PostgreSQL 15+, the rollups with their triggers, filled from the rows already there
    while writes wait. Idempotent; False when the server is too old (reports then read rows)."""
    if conn.info.server_version < 150000:
        logger.info("llm-proxy reports read rows directly: the rollups need PostgreSQL 15+")
        return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_for(table).encode())
        if rollup_ready(conn, table):
            return True
        started = time.monotonic()
        conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")  # no row written meanwhile
        conn.execute(_DDL_WORDS.sub(table, ROLLUP_SQL.read_text()).encode())
    logger.info("llm-proxy built the rollups of %s in %.1fs", table, time.monotonic() - started)
    return True


# --- SQLite ----------------------------------------------------------------------------

def cost_units_sql(c: str) -> tuple[str, str, str, str, str]:
    """SQL expressions for (whole 10^-12 USD of the decimal text `c`, 1 if it does not fit
    exactly else 0), then the fit test alone and the first two as templates of it ({ok}).
    Accepts what str(Decimal) writes: -12.5, 0.0003678, 1.5E-7, 1E+2."""
    m = f"(CASE WHEN instr({c}, 'E') THEN substr({c}, 1, instr({c}, 'E') - 1) ELSE {c} END)"
    e = f"(CASE WHEN instr({c}, 'E') THEN substr({c}, instr({c}, 'E') + 1) ELSE '0' END)"
    d = f"replace({m}, '.', '')"
    u = f"ltrim({d}, '-')"
    frac = f"(CASE WHEN instr({m}, '.') THEN length({m}) - instr({m}, '.') ELSE 0 END)"
    shift = f"({COST_SCALE} - {frac} + CAST({e} AS INTEGER))"
    ok = (f"(typeof({c}) = 'text' AND {u} <> '' AND {d} NOT GLOB '*[^0-9-]*' AND instr(substr({d}, 2), '-') = 0"
          f" AND length({m}) - length(replace({m}, '.', '')) <= 1 AND length({e}) BETWEEN 1 AND 5"
          f" AND {e} NOT GLOB '*[^0-9+-]*' AND instr(substr({e}, 2), '-') = 0 AND instr(substr({e}, 2), '+') = 0"
          f" AND ltrim({e}, '+-') <> '' AND {shift} BETWEEN 0 AND 18 AND length(ltrim({u}, '0')) + {shift} <= 18)")
    units = (f"(CASE WHEN {{ok}} THEN CAST({d} AS INTEGER) * "
             f"CAST(substr('1000000000000000000', 1, {shift} + 1) AS INTEGER) ELSE 0 END)")
    odd = f"(CASE WHEN {c} IS NULL OR {{ok}} THEN 0 ELSE 1 END)"
    return units.format(ok=ok), odd.format(ok=ok), ok, units, odd


def _level_table(table: str, level: str) -> str:
    bucket = "hour" if level == "hourly" else "day"
    return f"""CREATE TABLE IF NOT EXISTS {table}_{level} (
    {bucket} TEXT NOT NULL, -- the UTC {bucket} of the rows' ts: 2026-11-23T10 / 2026-11-23
    key_id TEXT NOT NULL, model TEXT NOT NULL, response_model TEXT NOT NULL, provider TEXT NOT NULL,
    api TEXT NOT NULL, status INTEGER NOT NULL,
    nulls INTEGER NOT NULL, -- bit i set: the i-th of key_id..status is NULL (stored as '' or 0)
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_units INTEGER NOT NULL, -- exact sum of the costs that fit, in 10^-12 USD
    cost_odd INTEGER NOT NULL,   -- rows whose cost did not fit (reports over them read the rows)
    unpriced INTEGER NOT NULL,
    PRIMARY KEY ({bucket}, key_id, model, response_model, provider, api, status, nulls)) WITHOUT ROWID;
"""


def _upsert(table: str, level: str, row: str, sign: str) -> str:
    bucket, width = ("hour", 13) if level == "hourly" else ("day", 10)
    _, _, ok, units, odd = cost_units_sql(f"{row}.cost_usd")
    units, odd = units.format(ok="c.ok"), odd.format(ok="c.ok")  # the long fit test once per row
    nulls = " | ".join(f"(({row}.{d} IS NULL) << {i})" for i, d in enumerate(_DIMS))
    dims = ", ".join(f"ifnull({row}.{d}, {'0' if d == 'status' else chr(39) * 2})" for d in _DIMS)
    measures = ", ".join(f"{sign}ifnull({row}.{m}, 0)" for m in (
        "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens"))
    keys = f"{bucket}, key_id, model, response_model, provider, api, status, nulls"
    sums = ", ".join(f"{m} = {m} + excluded.{m}" for m in (
        "requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
        "reasoning_tokens", "cost_units", "unpriced"))
    return f"""
    INSERT INTO {table}_{level} SELECT substr({row}.ts, 1, {width}), {dims}, {nulls}, {sign}1,
        {sign}(CASE WHEN {row}.status >= 400 OR {row}.error IS NOT NULL THEN 1 ELSE 0 END), {measures},
        {sign}{units}, {odd}, {sign}({row}.cost_usd IS NULL) FROM (SELECT {ok} AS ok) AS c WHERE true
    ON CONFLICT ({keys}) DO UPDATE SET {sums},
        cost_odd = cost_odd + excluded.cost_odd + (typeof(cost_units + excluded.cost_units) <> 'integer');"""


def sqlite_rollup_sql(table: str) -> str:
    """DDL of both SQLite levels, their generation counter and their row triggers."""
    gen = (f"UPDATE {table}_rollup_gen SET n = n + 1 WHERE {{row}}.ts < "
           "strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 hour');")
    parts = [_level_table(table, "hourly"), _level_table(table, "daily"),
             f"CREATE TABLE IF NOT EXISTS {table}_rollup_gen (one INTEGER PRIMARY KEY CHECK (one = 1), "
             "n INTEGER NOT NULL);\n",
             f"INSERT OR IGNORE INTO {table}_rollup_gen VALUES (1, 0);\n"]
    cleanup = "".join(f"\n    DELETE FROM {table}_{level} WHERE requests = 0;" for level in ("hourly", "daily"))
    for name, event, blocks in (
            ("ins", "INSERT", [("NEW", "")]),
            ("del", "DELETE", [("OLD", "-")]),
            ("upd", "UPDATE", [("OLD", "-"), ("NEW", "")])):
        body = "".join(_upsert(table, level, row, sign) for row, sign in blocks for level in ("hourly", "daily"))
        bump = gen.format(row=blocks[-1][0]) if event == "INSERT" else f"UPDATE {table}_rollup_gen SET n = n + 1;"
        parts.append(f"CREATE TRIGGER IF NOT EXISTS {table}_rollup_{name} AFTER {event} ON {table} BEGIN"
                     f"{body}{cleanup if event != 'INSERT' else ''}\n    {bump}\nEND;\n")
    return "".join(parts)


def _sqlite_fill(table: str, level: str) -> str:
    bucket, width = ("hour", 13) if level == "hourly" else ("day", 10)
    units, odd, *_ = cost_units_sql("cost_usd")
    nulls = " | ".join(f"(({d} IS NULL) << {i})" for i, d in enumerate(_DIMS))
    dims = ", ".join(f"ifnull({d}, {'0' if d == 'status' else chr(39) * 2})" for d in _DIMS)
    return (f"INSERT INTO {table}_{level} SELECT substr(ts, 1, {width}), {dims}, {nulls}, count(*), "
            "sum(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END), "
            + ", ".join(f"ifnull(sum({m}), 0)" for m in ("input_tokens", "output_tokens", "cached_tokens",
                                                         "cache_write_tokens", "reasoning_tokens"))
            + f", sum({units}), sum({odd}), sum(cost_usd IS NULL) FROM {table} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;")


def sqlite_rollup_ready(conn: sqlite3.Connection, table: str) -> bool:
    names = [f"{table}_rollup_{s}" for s in SQLITE_TRIGGERS]
    found = conn.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN "
                         f"({', '.join('?' for _ in names)})", names).fetchone()[0]
    return found == len(names)


def ensure_sqlite_rollup(conn: sqlite3.Connection, table: str) -> None:
    """Create the SQLite rollups and triggers, filled from the rows already there, in one
    write transaction (the writer waits meanwhile). `conn` must be in autocommit mode."""
    if sqlite_rollup_ready(conn, table):
        return
    started = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not sqlite_rollup_ready(conn, table):
            for statement in (f"DROP TABLE IF EXISTS {table}_hourly", f"DROP TABLE IF EXISTS {table}_daily"):
                conn.execute(statement)
            for statement in _split(sqlite_rollup_sql(table)):
                conn.execute(statement)
            conn.execute(_sqlite_fill(table, "hourly"))
            conn.execute(_sqlite_fill(table, "daily"))
            conn.execute(f"UPDATE {table}_rollup_gen SET n = n + 1")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    logger.info("llm-proxy built the SQLite rollups of %s in %.1fs", table, time.monotonic() - started)


def _split(script: str) -> list[str]:
    """Statements of a script of CREATE TABLE / INSERT / CREATE TRIGGER ... END; (no ';' in literals)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [s for s in statements if s]
