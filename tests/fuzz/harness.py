"""Drive the real LLMProxy addon in-process, one hostile call at a time, and check the invariants.

The hooks run in mitmproxy's order (request -> responseheaders -> the stream
callable chunk by chunk -> response or error) on flows made with
mitmproxy.test.tflow, inside a taddons context with every option set as
mitmproxy would. Rows go through the real Writer thread into a real sink
(SQLite in a temp dir, or a PostgreSQL table of its own), and each case waits
until the writer has dealt with its row, so the checks run on what is stored.

The writer lingers `flush_interval` seconds to batch rows; the harness lowers
that to a millisecond (an attribute of the running Writer, nothing else
changes) so thousands of cases fit in a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import psycopg
from mitmproxy import http
from mitmproxy.addons import proxyserver
from mitmproxy.flow import Error
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from llm_proxy import apis
from llm_proxy.addon import LLMProxy
from llm_proxy.config.providers import load_providers
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.keys.store import write_keyring
from llm_proxy.paths import DEFAULT_PRICING, DEFAULT_PROVIDERS
from llm_proxy.record import COLUMNS

from .strategies import REAL_KEY_PREFIX, SECRET, Answer, Delivery

PG_URL = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
COUNT_COLUMNS = ("input_tokens", "output_tokens", "total_tokens", "cached_tokens", "cache_write_tokens",
                 "reasoning_tokens")
WRITER_WAIT = 10.0  # seconds a row may take to be stored once handed to a live writer


class InvariantError(AssertionError):
    """One invariant broken; the message names it."""


def secret_forms(secret: str) -> list[str]:
    return [secret, secret.lower()]


def leaks(text: str, secret_list: list[str]) -> list[str]:
    """The secrets `text` holds, as is or once percent-decoded (case-insensitively)."""
    views = {text, unquote(text, errors="surrogateescape"), unquote_plus(text, errors="surrogateescape")}
    lowered = " ".join(v.lower() for v in views)
    return [s for s in secret_list if s.lower() in lowered]


class _Capture(logging.Handler):
    """Every log record, formatted with its traceback, as the log would show it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as e:  # a record that cannot even be formatted is itself worth seeing
            self.lines.append(f"UNFORMATTABLE {record.name} {record.msg!r} {e!r}")


@dataclass
class Case:
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    answer: Answer
    delivery: Delivery
    method: bytes = b"POST"


@dataclass
class Outcome:
    local: bool  # answered by the proxy itself
    client_bytes: bytes | None  # what the client received of the body
    strip: bool
    row: dict[str, Any] | None
    rows: int
    notes: list[str] = field(default_factory=list)
    model_call: bool = True  # the path names a known API shape (only those get rows)
    sent: tuple[bytes, bytes | None, list[tuple[bytes, bytes]], str] | None = None  # method, body, headers, url


class InProcess:
    """One addon, one sink, one journal; many cases."""

    def __init__(self, tmp: Path, *, keys: bool, database: str) -> None:
        self.tmp = tmp
        self.keys = keys
        self.database = database
        self.table = f"fuzz_{secrets.token_hex(5)}"
        self.journal = tmp / "journal"
        self.capture = _Capture()
        self.addon = LLMProxy()
        self.puts = 0
        self._stack = contextlib.ExitStack()
        self._env: dict[str, str | None] = {}
        self.real_keys: list[str] = []

    # --- set-up ----------------------------------------------------------------------

    def _setenv(self, name: str, value: str) -> None:
        self._env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def __enter__(self) -> InProcess:
        self._setenv("LLM_PROXY_HOME", str(self.tmp / "home"))
        for provider in load_providers(DEFAULT_PROVIDERS).by_name.values():
            if provider.api_key_env:
                real = f"{REAL_KEY_PREFIX}{provider.name}-{secrets.token_hex(4)}"
                self.real_keys.append(real)
                self._setenv(provider.api_key_env, real)
        keys_file = ""
        if self.keys:
            path = self.tmp / "keys.toml"
            write_keyring(path, KeyRing([VirtualKey(name="fuzzer", hash=hash_secret(SECRET), prefix=SECRET[:9])]))
            keys_file = str(path)
        root = logging.getLogger()
        root.addHandler(self.capture)
        ours = logging.getLogger("llm_proxy")
        self._level = ours.level
        ours.setLevel(logging.DEBUG)
        db = f"sqlite:///{self.tmp / 'rows.db'}" if self.database == "sqlite" else PG_URL
        tctx = self._stack.enter_context(taddons.context(proxyserver.Proxyserver(), self.addon))
        # The hooks run on the master's own loop: mitmproxy's log handler posts every record to it,
        # from any thread, and the context closes it only at the very end.
        self.master = tctx.master
        self.loop = tctx.master.event_loop
        tctx.configure(self.addon, llm_db=db, llm_table=self.table, llm_journal=str(self.journal),
                       llm_providers=str(DEFAULT_PROVIDERS), llm_pricing=str(DEFAULT_PRICING), llm_keys=keys_file,
                       llm_max_concurrent=0, llm_retries=0, llm_body_max_bytes=65536)
        self._adopt_writer()
        return self

    def _adopt_writer(self) -> None:
        """Speed up the running writer's batching and count the rows handed to it."""
        writer = self.addon.writer
        assert writer is not None
        writer.flush_interval = 0.001
        real_put = writer.put

        def counting_put(record: Any) -> None:
            self.puts += 1
            real_put(record)

        writer.put = counting_put  # type: ignore[method-assign]
        deadline = time.monotonic() + 15
        while writer.stats.database != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"writer never connected: {writer.stats.last_error}")
            time.sleep(0.01)

    def revive_writer(self) -> None:
        """A case killed the writer thread (a failure already reported): give the next case a
        new one, as a restarted proxy would have, so each case is judged on its own."""
        writer = self.addon.writer
        if writer is not None and writer._thread.is_alive():
            return
        self.addon._start_writer()
        self._adopt_writer()

    def __exit__(self, *exc: object) -> None:
        try:
            self.addon.done()
        finally:
            self.loop.run_until_complete(asyncio.sleep(0))
            self.master._legacy_log_events.uninstall()  # it would post to the loop closed next
            self._stack.close()
            logging.getLogger().removeHandler(self.capture)
            logging.getLogger("llm_proxy").setLevel(self._level)
            for name, value in self._env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if self.database == "postgresql":
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f"DROP TABLE IF EXISTS {self.table}, {self.table}_bodies CASCADE")
                    conn.execute(f"DROP TABLE IF EXISTS {self.table}_stage")

    # --- one case --------------------------------------------------------------------

    def make_flow(self, case: Case) -> http.HTTPFlow:
        request = tutils.treq(method=case.method, scheme=b"https", host="api.openai.com", port=443,
                              authority=b"", path=case.path, content=case.body, headers=Headers(case.headers))
        request.timestamp_start = time.time()  # tutils' fixed 2000-01-01 would make a 26-year call
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.openai.com")
        return flow

    def run(self, case: Case) -> Outcome:
        """Drive one call through the hooks; return what the client got and the stored row."""
        self.revive_writer()
        self.capture.lines.clear()
        flow = self.make_flow(case)
        model_call = apis.api_for_path(flow.request.path.partition("?")[0]) != apis.OTHER
        puts_before = self.puts
        self.loop.run_until_complete(self.addon.request(flow))
        sent = (flow.request.data.method, flow.request.raw_content, list(flow.request.headers.fields),
                flow.request.url)
        call = self.addon._calls.get(flow)
        health = flow.request.path.startswith("/_llm/")
        local = flow.response is not None
        client_bytes: bytes | None = None
        strip = bool(call is not None and call.strip_usage_chunk)
        notes: list[str] = []
        if local:
            self.addon.response(flow)
        else:
            answer, delivery = case.answer, case.delivery
            body = answer.body if delivery.cut is None else answer.body[:delivery.cut]
            headers = [(b"content-type", answer.content_type.encode())] if answer.content_type else []
            flow.response = tutils.tresp(status_code=answer.status, headers=Headers(headers), content=None)
            flow.response.timestamp_start = time.time()
            self.addon.responseheaders(flow)
            stream = flow.response.stream
            strip = strip and callable(stream)
            if stream:
                pieces, last = [], 0
                for cut in [*delivery.splits, len(body)]:
                    if cut > last:
                        pieces.append(body[last:cut])
                        last = cut
                out: list[bytes] = []
                for piece in pieces:
                    out.extend(_chunks(stream(piece) if callable(stream) else piece))
                if not delivery.ends_with_error and callable(stream):
                    end = stream(b"")
                    out.extend([] if end == b"" else _chunks(end))
                client_bytes = b"".join(out)
            else:
                flow.response.content = body
            flow.response.timestamp_end = time.time()
            if delivery.ends_with_error:
                flow.error = Error("connection closed by peer")
                self.addon.error(flow)
            else:
                self.addon.response(flow)
            if not stream:
                client_bytes = flow.response.raw_content
        handed = self.puts - puts_before
        rows = self._wait_for_rows(flow.id, handed)
        return Outcome(local=local or health, client_bytes=client_bytes, strip=strip,
                       row=rows[0] if rows else None, rows=len(rows), notes=notes, model_call=model_call,
                       sent=None if local else sent)

    def _wait_for_rows(self, request_id: str, handed: int) -> list[dict[str, Any]]:
        writer = self.addon.writer
        assert writer is not None
        deadline = time.monotonic() + WRITER_WAIT
        while handed:
            rows = self.fetch(request_id)
            if rows or not writer._thread.is_alive() or time.monotonic() > deadline:
                return rows
            if writer.queue_depth == 0 and (writer.stats.dead_letters or writer.stats.rows_dropped):
                time.sleep(0.01)
                return self.fetch(request_id)
            time.sleep(0.002)
        return self.fetch(request_id)

    def fetch(self, request_id: str) -> list[dict[str, Any]]:
        """The row through the view: large bodies are kept as parts by hash, and checked whole."""
        if self.database == "sqlite":
            with contextlib.closing(sqlite3.connect(self.tmp / "rows.db", timeout=10)) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(r) for r in conn.execute(f"SELECT * FROM {self.table}_full WHERE request_id = ?",
                                                      (request_id,))]
        with psycopg.connect(PG_URL) as conn:
            cur = conn.execute(f"SELECT * FROM {self.table}_full WHERE request_id = %s", (request_id,))
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def health_text(self) -> str:
        flow = self.make_flow(Case(b"/_llm/health", [(b"host", b"localhost")], b"", Answer(200, "", []),
                                   Delivery(None, False, []), method=b"GET"))
        self.loop.run_until_complete(self.addon.request(flow))
        assert flow.response is not None
        return flow.response.get_text(strict=False) or ""

    def journal_texts(self) -> dict[str, str]:
        texts = {}
        if self.journal.is_dir():
            for path in sorted(self.journal.rglob("*")):
                if path.is_file():
                    texts[str(path)] = path.read_bytes().decode("utf-8", "surrogateescape")
        return texts

    # --- the invariants --------------------------------------------------------------

    def check(self, case: Case, outcome: Outcome) -> None:
        """Raise the first broken invariant's own error (so hypothesis reports each kind of
        failure separately), with every problem of this case in the message."""
        problems: dict[type[InvariantError], list[str]] = {kind: [] for kind in _ORDER}
        secret_list = [SECRET, *self.real_keys]
        writer = self.addon.writer
        assert writer is not None
        if not writer._thread.is_alive():
            problems[WriterDied].append("writer thread died")
        expected_rows = 0 if case.path.startswith(b"/_llm/") or not outcome.model_call else 1
        if outcome.rows != expected_rows:
            problems[RowCount].append(f"expected {expected_rows} row(s) for this call, found {outcome.rows} "
                                      f"(writer: {writer.stats})")
        if not outcome.local:
            problems[ClientBytes] += _client_bytes_problems(case, outcome)
        if outcome.row is not None:
            for column, value in outcome.row.items():
                if value is not None and (found := leaks(_as_text(value), secret_list)):
                    problems[SecretInRow].append(f"secret {found} in column {column}: {_as_text(value)[:300]!r}")
            for column in COUNT_COLUMNS:
                value = outcome.row[column]
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    problems[BadCount].append(f"{column} is {value!r}, not NULL or a non-negative integer")
            cost = outcome.row["cost_usd"]
            if cost is not None:
                try:
                    amount = Decimal(str(cost))
                except InvalidOperation:
                    amount = None
                if amount is None or not amount.is_finite() or amount < 0:
                    problems[BadCost].append(f"cost_usd is {cost!r}, not NULL or >= 0")
        for line in self.capture.lines:
            if found := leaks(line, secret_list):
                problems[SecretInLog].append(f"secret {found} in a log line: {line[:400]!r}")
        self.capture.lines.clear()
        for name, text in self.journal_texts().items():
            if found := leaks(text, secret_list):
                problems[SecretInJournal].append(f"secret {found} in journal file {name}")
        health = self.health_text()
        if found := leaks(health, secret_list):
            problems[SecretInHealth].append(f"secret {found} in /_llm/health: {health[:300]!r}")
        raise_first(problems)


class WriterDied(InvariantError):
    pass


class RowCount(InvariantError):
    pass


class ClientBytes(InvariantError):
    pass


class SecretInRow(InvariantError):
    pass


class SecretInLog(InvariantError):
    pass


class SecretInJournal(InvariantError):
    pass


class SecretInHealth(InvariantError):
    pass


class BadCount(InvariantError):
    pass


class BadCost(InvariantError):
    pass


_ORDER: tuple[type[InvariantError], ...] = (WriterDied, RowCount, ClientBytes, SecretInRow, SecretInLog,
                                             SecretInJournal, SecretInHealth, BadCount, BadCost)


def raise_first(problems: dict[type[InvariantError], list[str]]) -> None:
    everything = "; ".join(p for kind in _ORDER for p in problems[kind])
    # One raise statement per kind: hypothesis tells failures apart by where they are raised.
    if problems[WriterDied]:
        raise WriterDied(everything)
    if problems[RowCount]:
        raise RowCount(everything)
    if problems[ClientBytes]:
        raise ClientBytes(everything)
    if problems[SecretInRow]:
        raise SecretInRow(everything)
    if problems[SecretInLog]:
        raise SecretInLog(everything)
    if problems[SecretInJournal]:
        raise SecretInJournal(everything)
    if problems[SecretInHealth]:
        raise SecretInHealth(everything)
    if problems[BadCount]:
        raise BadCount(everything)
    if problems[BadCost]:
        raise BadCost(everything)


def _chunks(result: bytes | list[bytes]) -> list[bytes]:
    return [result] if isinstance(result, bytes) else list(result)


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _client_bytes_problems(case: Case, outcome: Outcome) -> list[str]:
    """The client gets the upstream's bytes unchanged, but for the usage-only chunk the proxy
    removes when it injected include_usage (and, when the connection drops, the unfinished
    tail of the event being removed-or-not, which no client could have used)."""
    answer, delivery = case.answer, case.delivery
    sent = answer.body if delivery.cut is None else answer.body[:delivery.cut]
    got = outcome.client_bytes
    if got is None:
        return ["the client got no body at all"]
    if not outcome.strip:
        return [] if got == sent else [f"client bytes differ from the upstream's: sent {sent[:200]!r}..., "
                                       f"got {got[:200]!r}... ({len(sent)} vs {len(got)} bytes)"]
    # Walk the events that arrived (whole or in part): each may be removed only if it is a usage-only chunk.
    candidates = [b""]
    offset = 0
    last_start = 0
    for event, strippable in zip(answer.events, answer.strippable):
        if offset >= len(sent):
            break
        piece = sent[offset:offset + len(event)]
        whole = len(piece) == len(event)
        options = []
        if strippable is not True or not whole:
            options.append(piece)
        if strippable is not False:
            options.append(b"")
        last_start = offset
        candidates = [c + o for c in candidates for o in options][:64]
        offset += len(event)
    for candidate in candidates:
        if got == candidate:
            return []
        if delivery.ends_with_error and candidate.startswith(got) and len(got) >= _kept_before(
                answer, sent, last_start, candidate):
            return []
    return [f"client bytes differ from the upstream's minus the usage chunk: sent {sent[:300]!r}, "
            f"got {got[:300]!r}"]


def _kept_before(answer: Answer, sent: bytes, last_start: int, candidate: bytes) -> int:
    """A lower bound on what must have reached the client of `candidate` before a drop:
    everything but the last event that arrived (its tail may be held back)."""
    return max(0, len(candidate) - (len(sent) - last_start))
