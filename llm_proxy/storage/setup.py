"""A Writer built from the proxy's storage options: one place that checks them and picks the sink."""

from __future__ import annotations

from typing import Any

from ..config.errors import ConfigError
from ..limits.budget import SpendBook
from ..paths import default_db_url
from .dsn import DatabaseURLError, check_table_name, parse_db_url
from .journal import Journal, journal_dir
from .postgres import PostgresSink
from .sqlite import SqliteSink
from .writer import Writer


def writer_from_options(options: Any, spend: SpendBook) -> Writer:
    """The writer `llm_db`, `llm_table`, `llm_journal*`, `llm_body_max_bytes`, `llm_budget_refresh`
    and `llm_writer_max_mb` describe (not started); ConfigError names the option to fix."""
    try:
        database = parse_db_url(options.llm_db or default_db_url())
        table = check_table_name(options.llm_table)
    except DatabaseURLError as e:
        raise ConfigError(str(e)) from e
    if options.llm_budget_refresh <= 0:
        raise ConfigError("llm_budget_refresh must be a positive number of seconds")
    if options.llm_journal_max_mb <= 0:
        raise ConfigError("llm_journal_max_mb must be a positive number of megabytes")
    if options.llm_writer_max_mb <= 0:
        raise ConfigError("llm_writer_max_mb must be a positive number of megabytes")
    sink: PostgresSink | SqliteSink
    if database.kind == "postgresql":
        sink, refresh = PostgresSink(database.target, table), float(options.llm_budget_refresh)
    else:
        sink, refresh = SqliteSink(database.target, table), None  # embedded: this proxy is the only writer
    journal = Journal(journal_dir(options.llm_journal, table), options.llm_journal_max_mb << 20)
    return Writer(sink, f"{database.describe()} table {table}", journal=journal,
                  body_max_bytes=options.llm_body_max_bytes, spend=spend, spend_refresh=refresh,
                  max_queue_bytes=options.llm_writer_max_mb << 20)
