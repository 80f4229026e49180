"""Virtual keys in PostgreSQL (`llm_keys=db`): table `llm_keys` of `llm_db`, shared by every proxy.

The same store interface as keys.toml (read, editing) so the CLI and the keys API
run the same operations (keys.admin) on it, and every row read goes through
keys.model.parse_key: the one validation of a key, whichever store it comes from.

Edits lock the table (SHARE ROW EXCLUSIVE conflicts with itself, not with readers),
so two edits never lose each other's change, and stamp each changed row with a
`revision` larger than any before. A proxy learns of changes by polling
`(count(*), max(revision))` every 0.25 s on its own connection in a thread
(DbKeysWatcher): an insert or update raises the max, a delete lowers the count.
A poll rather than LISTEN/NOTIFY: it needs no long-lived listening session to
re-establish after a database restart, it also sees rows changed by hand with
SQL, and a one-row aggregate over a primary-keyed table four times a second is
nothing for PostgreSQL; a change is in force on every proxy well within 1 s.
Reading and parsing run in that thread; the event loop only swaps the ring in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from ..config.errors import ConfigError
from ..paths import SCHEMA_SQL
from .model import KeyRing, VirtualKey, parse_key
from .store import FileStore

logger = logging.getLogger(__name__)

DB = "db"  # the llm_keys (and $LLM_PROXY_KEYS) value that means "table llm_keys of the database"
TABLE = "llm_keys"
SCHEMA_LOCK = 0x6C6C6D70  # storage/postgres.py's lock for applying DDL ("llmp")
_COLUMNS = ("name", "hash", "prefix", "created", "disabled", "expires", "rpm", "tpm", "parallel", "budget",
            "period", "models")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}"
_SIGNATURE = f"SELECT count(*), coalesce(max(revision), 0) FROM {TABLE}"
_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}, revision, updated) "
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}, %s, now()) "
    "ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_COLUMNS[1:], "revision", "updated"))
)


def keys_ddl() -> str:
    """The llm_keys statements of schema.sql (the one DDL), for a store used before any proxy ran."""
    text = re.sub(r"--[^\n]*", "", SCHEMA_SQL.read_text())
    statements = [s.strip() for s in text.split(";")]
    return ";\n".join(s for s in statements if re.search(rf"\b{TABLE}\b", s)) + ";"


def key_from_row(row: tuple[Any, ...]) -> VirtualKey:
    """A row of llm_keys as a key, validated exactly as a keys.toml entry is."""
    table = {c: v for c, v in zip(_COLUMNS, row) if v is not None and c != "name"}
    models = table.get("models")
    if isinstance(models, str):  # jsonb comes back parsed; text (hand-edited) does not
        table["models"] = json.loads(models)
    return parse_key(row[0], table)


def _row_of(key: VirtualKey) -> tuple[Any, ...]:
    return (key.name, key.hash, key.prefix, key.created, key.disabled, key.expires, key.rpm, key.tpm,
            key.parallel, key.budget, key.period, Jsonb(list(key.models)) if key.models else None)


class DbStore:
    def __init__(self, url: str, *, connect_timeout: int = 5) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._ensured = False

    def describe(self) -> str:
        return f"table {TABLE} of the database"

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout, **kwargs)
        if not self._ensured:
            with conn.transaction():
                # The writer's DDL lock: its schema.sql makes llm_keys too, maybe at this very moment.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(keys_ddl().encode())
            self._ensured = True
        return conn

    def read(self) -> KeyRing:
        with self.connect(autocommit=True) as conn:
            return load(conn)

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, VirtualKey]]:
        """Lock the table, yield its keys by name, write back what changed (one transaction)."""
        with self.connect() as conn:
            with conn.transaction():
                conn.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
                before = load(conn).by_name
                keys = dict(before)
                yield keys
                gone = [name for name in before if name not in keys]
                changed = [key for name, key in keys.items() if before.get(name) != key]
                if not gone and not changed:
                    return
                (top,) = conn.execute(
                    f"SELECT greatest(coalesce(max(revision), 0) + 1, "
                    f"(extract(epoch FROM clock_timestamp()) * 1000000)::bigint) FROM {TABLE}").fetchone()
                if gone:
                    conn.execute(f"DELETE FROM {TABLE} WHERE name = ANY(%s)", (gone,))
                for key in changed:
                    conn.execute(_UPSERT, (*_row_of(key), top))


def load(conn: psycopg.Connection) -> KeyRing:
    rows = conn.execute(_SELECT).fetchall()
    try:
        return KeyRing(key_from_row(row) for row in rows)
    except ConfigError as e:
        raise ConfigError(f"table {TABLE}: {e}") from None


def signature(conn: psycopg.Connection) -> tuple[int, int]:
    count, top = conn.execute(_SIGNATURE).fetchone()
    return int(count), int(top)


class DbKeysWatcher:
    """Polls llm_keys in a thread; a change is handed to `on_change` on the event loop."""

    def __init__(self, store: DbStore, on_change: Callable[[KeyRing], None], interval: float = 0.25,
                 seen: tuple[int, int] | None = None) -> None:
        self.store = store
        self.on_change = on_change
        self.interval = interval
        self.seen = seen
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Begin watching; a no-op when already watching or before the event loop runs."""
        if self._thread is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # configure() before the loop runs: running() starts us
        self._thread = threading.Thread(target=self._run, name="llm-proxy-keys-db", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.store.connect(autocommit=True)
                current = signature(conn)
                if current != self.seen:
                    ring = load(conn)
                    self.seen = current
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._apply, ring)
                if self.error is not None:
                    logger.info("llm-proxy reads keys from the database again")
                self.error = None
            except (psycopg.Error, ConfigError, OSError) as e:
                if self.error is None:
                    logger.error("llm-proxy cannot read keys from the database (keeping the keys in force): %s",
                                 str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                self.error = type(e).__name__
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def state(self) -> dict[str, Any]:
        """The "keys_db" section of /_llm/health."""
        return {"state": "down" if self.error else "up", "last_error": self.error,
                "when_down": "the keys last read stay in force; changes wait for the database"}

    def _apply(self, ring: KeyRing) -> None:
        self.on_change(ring)
        logger.info("llm-proxy reloaded keys from the database: %d keys", len(ring))


def initial_keys(store: DbStore) -> tuple[KeyRing | None, tuple[int, int] | None]:
    """The keys at start-up (configure, before traffic), or (None, None) when the database is down."""
    try:
        with store.connect(autocommit=True) as conn:
            seen = signature(conn)
            return load(conn), seen
    except (psycopg.Error, OSError) as e:
        logger.error("llm-proxy cannot read keys from the database yet; every call gets a 401 until it "
                     "can: %s", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return None, None


def open_store(setting: str, db_url: str) -> DbStore | FileStore | None:
    """The store an llm_keys value names: "db" (table llm_keys of `db_url`), a keys file, or none."""
    if not setting:
        return None
    if setting != DB:
        return FileStore(Path(setting))
    if not db_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "llm_keys=db keeps keys in PostgreSQL for several proxies; set llm_db (or $DATABASE_URL) to a "
            "postgresql:// URL, or on a single proxy use a keys file (llm_keys=keys.toml)")
    return DbStore(db_url)


class _KeysUser(Protocol):
    keys_required: bool

    def use_keys(self, keys: KeyRing) -> None: ...

    def use_keys_file(self, keys: KeyRing) -> None: ...


def watch_db_keys(db_url: str, access: _KeysUser) -> DbKeysWatcher:
    """llm_keys=db on a proxy: load the keys now (start-up), then follow the table.

    Keys are always required in this mode, even while the table is empty or unreadable:
    a proxy told to check keys never turns into a passthrough (every call gets a 401 until
    keys are there).
    """
    store = open_store(DB, db_url)
    assert isinstance(store, DbStore)
    ring, seen = initial_keys(store)
    access.use_keys_file(ring or KeyRing())
    access.keys_required = True
    watcher = DbKeysWatcher(store, access.use_keys, seen=seen)
    watcher.start()
    return watcher
