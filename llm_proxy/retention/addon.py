"""Body retention: request and response bodies older than llm_body_retention_days are dropped.

Rows stay (usage, cost, status, timings: what reports and budgets read); only
their bodies go, and the body parts no remaining body uses are freed. The work
runs in a worker thread with its own database connection, at start-up and then
hourly: never on mitmproxy's event loop, never in the writer's way (a statement
at a time, batches of a few thousand rows).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from mitmproxy import ctx, exceptions

from ..paths import default_db_url
from ..storage.dsn import DatabaseURLError, check_table_name, parse_db_url
from ..storage.errors import summarize
from ..storage.retention import Retention

logger = logging.getLogger(__name__)

INTERVAL = 3600.0  # seconds between runs
FIRST_RUN = 3.0  # after start-up: let the writer create the table first


class BodyRetention:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.interval = INTERVAL
        self.runs = 0

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "llm_body_retention_days", int, 0,
            "Drop the request and response bodies of rows older than this many days (the rows stay); "
            "checked at start-up and hourly. 0: keep bodies as long as the rows.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llm_body_retention_days" in updated and ctx.options.llm_body_retention_days < 0:
            raise exceptions.OptionsError("llm_body_retention_days must be 0 (keep bodies) or a number of days")

    def running(self) -> None:
        days = ctx.options.llm_body_retention_days
        if days <= 0 or self._thread is not None:
            return
        try:
            database = parse_db_url(ctx.options.llm_db or default_db_url())
            table = check_table_name(ctx.options.llm_table)
        except DatabaseURLError as e:
            raise exceptions.OptionsError(str(e)) from e
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(Retention(database, table), days),
                                        name="llm-proxy-retention", daemon=True)
        self._thread.start()

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self, retention: Retention, days: int) -> None:
        wait = FIRST_RUN
        while not self._stop.wait(wait):
            wait = self.interval
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                with retention:
                    done = retention.drop_bodies(cutoff)
            except Exception as e:  # the database down: the next run tries again
                logger.warning("llm-proxy body retention could not run (%s); next try in %ds", summarize(e),
                               int(wait))
                continue
            self.runs += 1
            logger.info("llm-proxy body retention: bodies of %d rows older than %s dropped, %d unused parts freed",
                        done.bodies, cutoff.isoformat(timespec="seconds"), done.parts)
