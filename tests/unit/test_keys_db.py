"""Keys in PostgreSQL (llm_keys=db): the DbStore behind the CLI and the keys API, its watcher,
and the choice of store. Each test uses a schema of its own (search_path in the URL)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from llm_proxy.config.errors import ConfigError
from llm_proxy.keys import admin
from llm_proxy.keys.dbstore import DbKeysWatcher, DbStore, keys_ddl, open_store, signature
from llm_proxy.keys.model import KeyRing, VirtualKey, hash_secret
from llm_proxy.keys.store import FileStore, write_keyring
from llm_proxy.storage.schema import sqlite_schema

PG = os.environ.get("LLM_PROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def url() -> Iterator[str]:
    schema = f"llmk_{secrets.token_hex(5)}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{PG}?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_operations_round_trip_through_the_table(url: str) -> None:
    store = DbStore(url)
    key, secret = admin.create_key(store, "alice", admin.parse_changes(
        {"rpm": 60, "budget": "12.50", "period": "7d", "models": ["gpt-4o*"], "expires": "2100-01-01"}))
    ring = store.read()
    assert ring.by_name["alice"] == key
    assert ring.find(secret) == key
    with pytest.raises(admin.KeyExists):
        admin.create_key(store, "alice", {})
    changed = admin.change_key(store, "alice", {"rpm": None, "tpm": 500}, disabled=True)
    assert store.read().by_name["alice"] == changed and changed.disabled and changed.rpm is None
    _, new_secret = admin.rotate_key(store, "alice")
    assert store.read().find(secret) is None and store.read().find(new_secret) is not None
    admin.delete_key(store, "alice")
    assert len(store.read()) == 0
    with pytest.raises(admin.NoSuchKey):
        admin.delete_key(store, "alice")
    with psycopg.connect(url) as conn:  # what the table holds: a hash, never the secret
        columns = [c.name for c in conn.execute("SELECT * FROM llm_keys LIMIT 0").description]
    assert "hash" in columns and not any("secret" in c for c in columns)


def test_a_bad_row_is_refused_by_the_one_validation(url: str) -> None:
    store = DbStore(url)
    admin.create_key(store, "ok", {})
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO llm_keys (name, hash) VALUES ('bad', 'sha256:not-hex')")
    with pytest.raises(ConfigError, match=r"table llm_keys: \[keys.bad\]: hash must be"):
        store.read()


def test_signature_sees_every_kind_of_change(url: str) -> None:
    store = DbStore(url)
    admin.create_key(store, "a", {})
    admin.create_key(store, "b", {})
    seen = set()
    with store.connect(autocommit=True) as conn:
        seen.add(signature(conn))
        admin.change_key(store, "a", {"rpm": 5})
        seen.add(signature(conn))
        admin.delete_key(store, "a")  # not the newest row
        seen.add(signature(conn))
        admin.delete_key(store, "b")  # the newest row, then another made: never an old signature again
        seen.add(signature(conn))
        admin.create_key(store, "c", {})
        seen.add(signature(conn))
    assert len(seen) == 5


def test_import_is_all_or_nothing(url: str, tmp_path: Path) -> None:
    store = DbStore(url)
    admin.create_key(store, "taken", {})
    file_ring = KeyRing([VirtualKey("new", hash_secret("s1"), prefix="llmp-s1", rpm=3),
                         VirtualKey("taken", hash_secret("s2"))])
    with pytest.raises(admin.KeyExists, match="taken"):
        admin.import_keys(store, file_ring)
    assert set(store.read().by_name) == {"taken"}  # nothing of the file went in
    assert admin.import_keys(store, file_ring, overwrite=True) == ["new", "taken"]
    assert store.read().find("s1").rpm == 3 and store.read().find("s2").name == "taken"
    with pytest.raises(admin.KeyExists, match="same secret"):
        admin.import_keys(store, KeyRing([VirtualKey("copy", hash_secret("s1"))]))


def test_watcher_hands_a_change_to_the_loop_within_a_second(url: str) -> None:
    store = DbStore(url)
    admin.create_key(store, "first", {})

    async def run() -> float:
        rings: list[KeyRing] = []
        watcher = DbKeysWatcher(store, rings.append, interval=0.1)
        watcher.start()
        try:
            while not rings:
                await asyncio.sleep(0.02)
            assert set(rings[-1].by_name) == {"first"}
            await asyncio.to_thread(admin.change_key, store, "first", {}, True)
            changed = time.monotonic()
            while not rings[-1].by_name["first"].disabled:
                await asyncio.sleep(0.02)
                assert time.monotonic() - changed < 1.0
            return time.monotonic() - changed
        finally:
            watcher.stop()

    assert asyncio.run(run()) < 1.0


def test_open_store_chooses_by_the_llm_keys_value(tmp_path: Path) -> None:
    assert open_store("", "sqlite:///x.db") is None
    assert isinstance(open_store(str(tmp_path / "keys.toml"), ""), FileStore)
    assert isinstance(open_store("db", PG), DbStore)
    with pytest.raises(ConfigError, match="postgresql:// URL"):
        open_store("db", "sqlite:///llm-proxy.db")


def test_keys_ddl_comes_from_schema_sql_and_sqlite_still_loads_it() -> None:
    ddl = keys_ddl()
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS llm_keys") and "llm_requests" not in ddl
    conn = sqlite3.connect(":memory:")
    conn.executescript(sqlite_schema("llm_requests"))  # the embedded database takes the same file
    assert conn.execute("SELECT count(*) FROM llm_keys").fetchone() == (0,)


def test_file_store_is_the_same_interface(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing())
    store = FileStore(path)
    _, secret = admin.create_key(store, "f", {"budget": Decimal("1")})
    assert store.read().find(secret).budget == Decimal("1")
    assert admin.create_key(path, "g", {})[0].name == "g"  # a Path still means a keys file
