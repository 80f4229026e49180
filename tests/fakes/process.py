"""A subprocess the tests and the benchmark start and watch: its output kept, its readiness
read from a line it prints (mitmdump's "listening at ..."), stopped by signal.

Each runs in a session of its own, so a Ctrl-C reaches only the caller.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from signal import SIGTERM

REPO = Path(__file__).resolve().parents[2]
# mitmdump's "... listening at 127.0.0.1:PORT." (the proxy, not mitmweb's web UI)
LISTENING = re.compile(r"listening at (?!https?://)\S*:(\d+)")


class ServiceError(RuntimeError):
    """A service did not start, or never logged what was awaited."""


class Service:
    """A subprocess in its own session (Ctrl-C reaches only us; we stop it by pid)."""

    def __init__(self, name: str, cmd: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None,
                 *, max_lines: int | None = 2000) -> None:
        self.name = name
        self.cmd = cmd
        self.ready = ready
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=max_lines)  # None: the whole log (tests scan it)
        self.match: re.Match[str] | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 30) -> Service:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, cwd=REPO, start_new_session=True)
        threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} did not start: {shlex.join(self.cmd)}\n{self.log}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.match is None and (m := self.ready.search(line)):
                self.match = m
                self._ready.set()

    @property
    def group(self) -> str:
        assert self.match is not None
        return self.match.group(1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise ServiceError(f"{text!r} never appeared in the {self.name} log:\n{self.log}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def cpu_seconds(self, main_thread: bool = False) -> float | None:
        """User + system CPU time so far of the process, or of its main thread (Linux /proc)."""
        try:
            path = f"/proc/{self.pid}/task/{self.pid}/stat" if main_thread else f"/proc/{self.pid}/stat"
            stat = Path(path).read_text()
        except (OSError, AssertionError):
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
