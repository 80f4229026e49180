"""Live reload of keys.toml: a change takes effect without a restart or a dropped request.

A background task polls the file's identity (inode, size, mtime) a few times a
second; reading and parsing happen in a worker thread, never on the event
loop. The CLI replaces the file atomically, so a reload sees the old file or
the new one, never half of it. A file that does not parse leaves the keys in
force unchanged and is reported once, and so does a file that disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..config.errors import ConfigError
from .model import KeyRing
from .store import read_keyring

logger = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KeysWatcher:
    def __init__(self, path: Path, on_change: Callable[[KeyRing], None], interval: float = 0.25) -> None:
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self.seen: Signature = signature(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin watching; a no-op when already watching or when no event loop runs yet."""
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # configure() before the loop runs: running() starts us
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):  # a transient stat error must not end the watch
                await self.check()

    async def check(self) -> None:
        current = await asyncio.to_thread(signature, self.path)
        if current == self.seen:
            return
        self.seen = current
        if current is None:
            # Never fall back to passthrough because a file vanished (a mistaken rm, a bad deploy).
            logger.error("llm-proxy keys file %s is gone; keeping the keys in force", self.path)
            return
        try:
            ring = await asyncio.to_thread(read_keyring, self.path)
        except ConfigError as e:
            logger.error("llm-proxy keeps the keys it has: %s", e)
            return
        if not len(ring) and await asyncio.to_thread(signature, self.path) is None:
            # Deleted between the stat and the read: read_keyring saw no file, not an empty one.
            self.seen = None
            logger.error("llm-proxy keys file %s is gone; keeping the keys in force", self.path)
            return
        self.on_change(ring)
        logger.info("llm-proxy reloaded %s: %d keys", self.path, len(ring))
