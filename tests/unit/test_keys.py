"""Virtual keys: the model (validation, expiry, globs, TOML round trip), the store and the reloader."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import tomllib
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import tomli_w

from llm_proxy.config.providers import ConfigError
from llm_proxy.keys import store
from llm_proxy.keys.model import (
    KeyRing,
    VirtualKey,
    check_name,
    hash_secret,
    new_secret,
    parse_expires,
    parse_key,
    parse_keyring,
    period_start,
)
from llm_proxy.keys.reloader import KeysWatcher
from llm_proxy.keys.store import HEADER, editing, read_keyring, write_keyring

SECRET = "llmp-" + "A" * 43
HASH = hash_secret(SECRET)
OTHER = "llmp-" + "B" * 43
OTHER_HASH = hash_secret(OTHER)


def key(name: str = "alice", digest: str = HASH, **kw) -> VirtualKey:
    return VirtualKey(name=name, hash=digest, **kw)


# --- secrets and names -------------------------------------------------------------------

def test_new_secret_format():
    secret = new_secret()
    assert re.fullmatch(r"llmp-[A-Za-z0-9_-]{43}", secret)
    assert len(secret) == 48
    assert new_secret() != secret


def test_hash_secret_is_prefixed_sha256_hex():
    assert hash_secret("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret(SECRET) != hash_secret(OTHER)


@pytest.mark.parametrize("name", ["alice", "A", "7", "team.ml@corp-1_x", "a" * 64])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "-a", "_a", ".a", "@a", "a" * 65, "a/b", "caf\u00e9", "a:b"])
def test_check_name_refuses(name):
    with pytest.raises(ConfigError) as e:
        check_name(name)
    assert str(e.value) == (
        f"key name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
    )


def test_check_name_refuses_trailing_newline():
    # BUG: _NAME uses `$`, which also matches before a final "\n", so "alice\n" passes.
    with pytest.raises(ConfigError):
        check_name("alice\n")


# --- parse_key / parse_keyring -------------------------------------------------------------

def test_parse_key_minimal_defaults():
    assert parse_key("alice", {"hash": HASH}) == VirtualKey(name="alice", hash=HASH)


def test_parse_key_every_field():
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    parsed = parse_key("alice", {
        "hash": HASH, "prefix": "llmp-AAAA", "created": created, "disabled": True,
        "expires": date(2026, 12, 31), "rpm": 60, "tpm": 1000, "parallel": 2,
        "budget": Decimal("12.34"), "period": "7d", "models": ["gpt-4o*", "claude-*"],
    })
    assert parsed == VirtualKey(
        name="alice", hash=HASH, prefix="llmp-AAAA", created=created, disabled=True,
        expires=datetime(2027, 1, 1, tzinfo=UTC), rpm=60, tpm=1000, parallel=2,
        budget=Decimal("12.34"), period="7d", models=("gpt-4o*", "claude-*"),
    )


def test_parse_key_int_and_float_budgets_become_decimal():
    assert parse_key("a", {"hash": HASH, "budget": 5}).budget == Decimal("5")
    assert parse_key("a", {"hash": HASH, "budget": 0.1}).budget == Decimal("0.1")
    assert parse_key("a", {"hash": HASH, "budget": 0}).budget == Decimal("0")


HASH_MSG = "[keys.a]: hash must be 'sha256:' + 64 hex digits (made by `llm-proxy keys create`)"


@pytest.mark.parametrize(("table", "message"), [
    ({}, HASH_MSG),
    ({"hash": "abc"}, HASH_MSG),
    ({"hash": "sha256:" + "A" * 64}, HASH_MSG),  # upper-case hex is not what hash_secret makes
    ({"hash": "sha256:" + "a" * 63}, HASH_MSG),
    ({"hash": "md5:" + "a" * 64}, HASH_MSG),
    ({"hash": 12}, HASH_MSG),
    ({"hash": HASH, "colour": "red"}, "[keys.a]: unknown field(s) ['colour']"),
    ({"hash": HASH, "secret": SECRET, "b": 1}, "[keys.a]: unknown field(s) ['b', 'secret']"),
    ({"hash": HASH, "rpm": -1}, "[keys.a].rpm must be a positive whole number"),
    ({"hash": HASH, "rpm": 0}, "[keys.a].rpm must be a positive whole number"),
    ({"hash": HASH, "rpm": True}, "[keys.a].rpm must be a positive whole number"),
    ({"hash": HASH, "rpm": 1.5}, "[keys.a].rpm must be a positive whole number"),
    ({"hash": HASH, "rpm": "60"}, "[keys.a].rpm must be a positive whole number"),
    ({"hash": HASH, "tpm": -5}, "[keys.a].tpm must be a positive whole number"),
    ({"hash": HASH, "parallel": False}, "[keys.a].parallel must be a positive whole number"),
    ({"hash": HASH, "period": "2d"}, "[keys.a].period must be one of 1d, 7d, 30d, monthly"),
    ({"hash": HASH, "period": "Monthly"}, "[keys.a].period must be one of 1d, 7d, 30d, monthly"),
    ({"hash": HASH, "models": "gpt-4o"}, "[keys.a].models must be a list of model names or globs"),
    ({"hash": HASH, "models": [""]}, "[keys.a].models must be a list of model names or globs"),
    ({"hash": HASH, "models": ["gpt", 4]}, "[keys.a].models must be a list of model names or globs"),
    ({"hash": HASH, "budget": -1}, "[keys.a].budget must be a non-negative amount of USD"),
    ({"hash": HASH, "budget": Decimal("-0.01")}, "[keys.a].budget must be a non-negative amount of USD"),
    ({"hash": HASH, "budget": True}, "[keys.a].budget must be a non-negative amount of USD"),
    ({"hash": HASH, "budget": "5"}, "[keys.a].budget must be a non-negative amount of USD"),
    ({"hash": HASH, "expires": "soon"}, "[keys.a]: expires 'soon' is not a date (2026-12-31) or datetime"),
    ({"hash": HASH, "expires": 5}, "[keys.a]: expires must be a date or datetime"),
])
def test_parse_key_refuses(table, message):
    with pytest.raises(ConfigError) as e:
        parse_key("a", table)
    assert str(e.value) == message


def test_parse_key_checks_the_name():
    with pytest.raises(ConfigError, match=r"^key name 'a b': use 1-64"):
        parse_key("a b", {"hash": HASH})


def test_parse_keyring_reads_keys():
    ring = parse_keyring({"keys": {"a": {"hash": HASH}, "b": {"hash": OTHER_HASH, "rpm": 5}}}, "k.toml")
    assert len(ring) == 2
    assert ring.by_name == {"a": key("a"), "b": key("b", OTHER_HASH, rpm=5)}


def test_parse_keyring_empty():
    assert len(parse_keyring({}, "k.toml")) == 0
    assert len(parse_keyring({"keys": {}}, "k.toml")) == 0


@pytest.mark.parametrize(("data", "message"), [
    ({"keys": ["a"]}, "k.toml: [keys] must hold [keys.NAME] tables"),
    ({"keys": {}, "extra": 1}, "k.toml: unknown top-level entries ['extra']"),
    ({"keys": {"a": "x"}}, "k.toml: keys.a must be a table"),
    ({"keys": {"a": {"hash": HASH, "rpm": -3}}}, "k.toml: [keys.a].rpm must be a positive whole number"),
    ({"keys": {"a": {"hash": HASH}, "b": {"hash": HASH}}}, "k.toml: two keys share one secret hash"),
])
def test_parse_keyring_refuses(data, message):
    with pytest.raises(ConfigError) as e:
        parse_keyring(data, "k.toml")
    assert str(e.value) == message


# --- expiry, models ---------------------------------------------------------------------------

def test_date_expires_at_the_end_of_that_day_utc():
    expires = parse_expires(date(2026, 12, 31), "x")
    assert expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_expires("2026-12-31", "x") == expires
    k = key(expires=expires)
    assert k.expired(datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) is False
    assert k.expired(datetime(2027, 1, 1, tzinfo=UTC)) is True
    # 23:30 on the 31st in New York is already 1 January UTC.
    assert k.expired(datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) is True


def test_datetime_expires_exactly():
    expires = parse_expires("2026-06-01T12:00:00", "x")  # naive means UTC
    assert expires == datetime(2026, 6, 1, 12, tzinfo=UTC)
    k = key(expires=expires)
    assert k.expired(datetime(2026, 6, 1, 11, 59, 59, tzinfo=UTC)) is False
    assert k.expired(datetime(2026, 6, 1, 12, tzinfo=UTC)) is True


def test_datetime_expires_with_offset():
    expires = parse_expires("2026-06-01T12:00:00+02:00", "x")
    assert expires == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert parse_expires(datetime(2026, 6, 1, 12), "x") == datetime(2026, 6, 1, 12, tzinfo=UTC)
    k = key(expires=expires)
    assert k.expired(datetime(2026, 6, 1, 9, 59, 59, tzinfo=UTC)) is False
    assert k.expired(datetime(2026, 6, 1, 10, tzinfo=UTC)) is True


def test_no_expiry_never_expires():
    assert parse_expires(None, "x") is None
    assert key().expired(datetime(9999, 1, 1, tzinfo=UTC)) is False


def test_allows_model_globs():
    k = key(models=("gpt-4o*", "claude-*"))
    assert k.allows_model("gpt-4o") is True
    assert k.allows_model("gpt-4o-mini") is True
    assert k.allows_model("claude-3-5-sonnet-latest") is True
    assert k.allows_model("gpt-4.1") is False
    assert k.allows_model("Claude-3") is False  # case-sensitive
    assert k.allows_model("xgpt-4o") is False
    assert k.allows_model("") is False
    assert k.allows_model(None) is True  # no model in the request: nothing to refuse


def test_allows_model_without_globs_allows_everything():
    assert key().allows_model("anything-at-all") is True
    assert key().allows_model(None) is True


def test_allows_model_exact_name():
    k = key(models=("gpt-4o",))
    assert (k.allows_model("gpt-4o"), k.allows_model("gpt-4o-mini")) == (True, False)


# --- to_toml -------------------------------------------------------------------------------------

def test_to_toml_minimal():
    assert key().to_toml() == {"hash": HASH, "prefix": ""}


def test_to_toml_full():
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    k = key(prefix="llmp-AAAA", created=created, disabled=True, expires=datetime(2027, 1, 1, tzinfo=UTC),
            rpm=60, tpm=1000, parallel=2, budget=Decimal("12.34"), period="30d", models=("gpt-4o*",))
    assert k.to_toml() == {
        "hash": HASH, "prefix": "llmp-AAAA", "created": created, "expires": datetime(2027, 1, 1, tzinfo=UTC),
        "rpm": 60, "tpm": 1000, "parallel": 2, "budget": Decimal("12.34"), "models": ["gpt-4o*"],
        "period": "30d", "disabled": True,
    }


def test_to_toml_round_trip_keeps_decimal_budget_exact():
    k = key(prefix="llmp-AAAA", created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            expires=datetime(2027, 1, 1, tzinfo=UTC), rpm=60, tpm=1000, parallel=2,
            budget=Decimal("12.34"), period="7d", models=("gpt-4o*", "claude-*"), disabled=True)
    text = tomli_w.dumps({"keys": {"alice": k.to_toml()}})
    assert "budget = 12.34\n" in text
    data = tomllib.loads(text, parse_float=Decimal)
    assert data["keys"]["alice"]["budget"] == Decimal("12.34")
    back = parse_keyring(data, "k.toml").by_name["alice"]
    assert back == k
    assert str(back.budget) == "12.34"


def test_to_toml_round_trip_minimal():
    text = tomli_w.dumps({"keys": {"bob": key("bob").to_toml()}})
    assert parse_keyring(tomllib.loads(text, parse_float=Decimal), "k").by_name == {"bob": key("bob")}


# --- KeyRing.find ------------------------------------------------------------------------------

def test_keyring_finds_by_secret_only():
    a, b = key("a"), key("b", OTHER_HASH)
    ring = KeyRing([a, b])
    assert len(ring) == 2
    assert ring.find(SECRET) is a
    assert ring.find(OTHER) is b
    assert ring.find(HASH) is None
    assert ring.find(HASH.removeprefix("sha256:")) is None
    assert ring.find(SECRET + "x") is None
    assert ring.find("") is None
    assert KeyRing().find(SECRET) is None


# --- period_start ----------------------------------------------------------------------------------

def test_period_start_monthly_is_calendar_month_utc():
    now = datetime(2026, 3, 15, 10, 20, 30, 500000, tzinfo=UTC)
    assert period_start("monthly", now) == datetime(2026, 3, 1, tzinfo=UTC)
    # 1 April 01:00 at +02:00 is still 31 March in UTC.
    local = datetime(2026, 4, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_start("monthly", local) == datetime(2026, 3, 1, tzinfo=UTC)
    assert period_start("monthly", datetime(2026, 3, 1, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(("period", "start"), [
    ("1d", datetime(2026, 3, 14, 10, 20, 30, tzinfo=UTC)),
    ("7d", datetime(2026, 3, 8, 10, 20, 30, tzinfo=UTC)),
    ("30d", datetime(2026, 2, 13, 10, 20, 30, tzinfo=UTC)),
])
def test_period_start_rolling(period, start):
    assert period_start(period, datetime(2026, 3, 15, 10, 20, 30, tzinfo=UTC)) == start


# --- store ---------------------------------------------------------------------------------------

def test_read_keyring_missing_file_is_empty(tmp_path):
    ring = read_keyring(tmp_path / "keys.toml")
    assert len(ring) == 0
    assert not (tmp_path / "keys.toml").exists()


def test_read_keyring_damaged_toml(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("[keys.alice\nhash = 1\n")
    with pytest.raises(ConfigError) as e:
        read_keyring(path)
    assert str(e.value).startswith(f"keys file {path} is damaged (not valid TOML): ")


def test_read_keyring_non_utf8_file_is_damaged(tmp_path):
    # BUG: tomllib raises UnicodeDecodeError for bytes that are not UTF-8; read_keyring lets it
    # escape instead of a ConfigError, so the reloader neither catches nor reports it.
    path = tmp_path / "keys.toml"
    path.write_bytes(b"\xff\xfe[keys]\n")
    with pytest.raises(ConfigError, match="damaged"):
        read_keyring(path)


def test_read_keyring_nan_budget_is_a_config_error(tmp_path):
    # BUG: parse_float=Decimal turns `nan` into Decimal('NaN'); `budget < 0` then raises
    # decimal.InvalidOperation instead of the ConfigError every other bad value gets.
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.a]\nhash = "{HASH}"\nbudget = nan\n')
    with pytest.raises(ConfigError, match=r"budget must be a non-negative amount of USD"):
        read_keyring(path)


def test_read_keyring_invalid_content_names_the_file(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('[keys.a]\nhash = "nope"\n')
    with pytest.raises(ConfigError) as e:
        read_keyring(path)
    assert str(e.value) == f"{path}: {HASH_MSG}"


def test_read_keyring_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^cannot read keys file "):
        read_keyring(tmp_path)


def test_write_keyring_is_atomic_private_and_readable(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("old")
    os.chmod(path, 0o644)
    ring = KeyRing([key("b", OTHER_HASH, budget=Decimal("12.34")), key("a", rpm=5)])
    write_keyring(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["keys.toml"]
    text = path.read_text()
    assert text.startswith(HEADER + "\n")
    assert text.index("[keys.a]") < text.index("[keys.b]")  # sorted by name
    assert SECRET not in text
    assert read_keyring(path).by_name == ring.by_name


def test_write_keyring_creates_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    assert read_keyring(path).by_name == {"alice": key()}


def test_write_keyring_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_keyring(path, KeyRing([key("other", OTHER_HASH)]))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keys.toml"]


def test_editing_round_trip(tmp_path):
    path = tmp_path / "keys.toml"
    with editing(path) as keys:
        assert keys == {}
        keys["alice"] = key(rpm=10)
    with editing(path) as keys:
        assert keys == {"alice": key(rpm=10)}
        keys["bob"] = key("bob", OTHER_HASH)
        del keys["alice"]
    assert read_keyring(path).by_name == {"bob": key("bob", OTHER_HASH)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p for p in os.listdir(tmp_path) if not p.endswith(".lock")) == ["keys.toml"]


def test_failing_edit_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with editing(path) as keys:
            keys["bob"] = key("bob", OTHER_HASH)
            del keys["alice"]
            raise RuntimeError("boom")
    assert path.read_bytes() == before


def test_editing_a_damaged_file_never_overwrites_it(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("[keys.a\n")
    with pytest.raises(ConfigError, match="damaged"):
        with editing(path) as keys:
            keys["bob"] = key("bob")
    assert path.read_text() == "[keys.a\n"


# --- reloader ------------------------------------------------------------------------------------

class Seen:
    def __init__(self) -> None:
        self.rings: list[KeyRing] = []

    def __call__(self, ring: KeyRing) -> None:
        self.rings.append(ring)


def test_watcher_reloads_after_a_change(tmp_path):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    seen = Seen()
    watcher = KeysWatcher(path, seen)
    asyncio.run(watcher.check())
    assert seen.rings == []  # nothing changed yet
    write_keyring(path, KeyRing([key(disabled=True), key("bob", OTHER_HASH)]))
    asyncio.run(watcher.check())
    assert len(seen.rings) == 1
    assert seen.rings[0].by_name == {"alice": key(disabled=True), "bob": key("bob", OTHER_HASH)}
    asyncio.run(watcher.check())
    assert len(seen.rings) == 1  # no second call for the same file


def test_watcher_sees_a_file_created_after_start(tmp_path):
    path = tmp_path / "keys.toml"
    seen = Seen()
    watcher = KeysWatcher(path, seen)
    write_keyring(path, KeyRing([key()]))
    asyncio.run(watcher.check())
    assert [r.by_name for r in seen.rings] == [{"alice": key()}]


def test_watcher_keeps_keys_when_the_file_is_damaged(tmp_path, caplog):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    seen = Seen()
    watcher = KeysWatcher(path, seen)
    path.write_text("[keys.alice\n this is not toml")
    with caplog.at_level(logging.ERROR, logger="llm_proxy.keys.reloader"):
        asyncio.run(watcher.check())
    assert seen.rings == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"llm-proxy keeps the keys it has: keys file {path} is damaged")
    # Mended: picked up on the next check.
    write_keyring(path, KeyRing([key("bob", OTHER_HASH)]))
    asyncio.run(watcher.check())
    assert [r.by_name for r in seen.rings] == [{"bob": key("bob", OTHER_HASH)}]


def test_watcher_keeps_keys_when_the_file_is_binary_garbage(tmp_path, caplog):
    # BUG (same root as test_read_keyring_non_utf8_file_is_damaged): check() raises
    # UnicodeDecodeError instead of logging; _run() then swallows it silently.
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    seen = Seen()
    watcher = KeysWatcher(path, seen)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.ERROR, logger="llm_proxy.keys.reloader"):
        asyncio.run(watcher.check())
    assert seen.rings == []
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_watcher_keeps_keys_when_the_file_is_deleted(tmp_path, caplog):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    seen = Seen()
    watcher = KeysWatcher(path, seen)
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="llm_proxy.keys.reloader"):
        asyncio.run(watcher.check())
        asyncio.run(watcher.check())
    assert seen.rings == []
    assert [r.getMessage() for r in caplog.records] == [
        f"llm-proxy keys file {path} is gone; keeping the keys in force"
    ]  # reported once


def test_watcher_start_without_a_loop_is_a_no_op(tmp_path):
    watcher = KeysWatcher(tmp_path / "keys.toml", Seen())
    watcher.start()
    assert watcher._task is None
    watcher.stop()
    assert watcher._task is None


def test_watcher_task_polls_in_a_running_loop(tmp_path):
    path = tmp_path / "keys.toml"
    write_keyring(path, KeyRing([key()]))
    seen = Seen()

    async def scenario():
        watcher = KeysWatcher(path, seen, interval=0.01)
        watcher.start()
        task = watcher._task
        watcher.start()  # a second start keeps the one task
        assert watcher._task is task
        write_keyring(path, KeyRing([key(disabled=True)]))
        for _ in range(200):
            if seen.rings:
                break
            await asyncio.sleep(0.005)
        watcher.stop()
        await asyncio.sleep(0)
        assert task.cancelled() or task.done()
        assert watcher._task is None

    asyncio.run(scenario())
    assert [r.by_name for r in seen.rings] == [{"alice": key(disabled=True)}]
