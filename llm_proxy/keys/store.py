"""Reading and (only for the CLI) writing keys.toml.

Writes are atomic (temp file, fsync, rename) and serialised by a lock file, so
a proxy reloading the file never sees half of it and two CLI runs never lose
each other's change. A file that does not parse is never overwritten: the
CLI refuses to touch it and says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import tomli_w

from ..config.errors import ConfigError
from .model import KeyRing, VirtualKey, parse_keyring

HEADER = (
    "# llm-proxy virtual keys. Written by `llm-proxy keys ...`; holds only hashes of the secrets.\n"
    "# Never commit this file.\n"
)


def read_keyring(path: Path) -> KeyRing:
    """The keys of a keys file; a missing file is an empty ring (passthrough)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except FileNotFoundError:
        return KeyRing()
    except OSError as e:
        raise ConfigError(f"cannot read keys file {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"keys file {path} is damaged (not valid TOML): {e}") from e
    return parse_keyring(data, str(path))


def write_keyring(path: Path, ring: KeyRing) -> None:
    data = {"keys": {name: key.to_toml() for name, key in sorted(ring.by_name.items())}}
    text = HEADER + "\n" + tomli_w.dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def editing(path: Path) -> Iterator[dict[str, VirtualKey]]:
    """Lock the file, yield its keys by name for changing, write them back atomically."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = dict(read_keyring(path).by_name)
        yield keys
        write_keyring(path, KeyRing(keys.values()))


class FileStore:
    """Keys kept in a keys.toml file (one proxy): the store interface over read_keyring/editing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> KeyRing:
        return read_keyring(self.path)

    def editing(self) -> contextlib.AbstractContextManager[dict[str, VirtualKey]]:
        return editing(self.path)
