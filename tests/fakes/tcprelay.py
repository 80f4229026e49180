"""A TCP relay a test can cut and restore: a database outage without stopping the shared server.

    with TcpRelay("127.0.0.1", 5432).start() as relay:
        url = f"postgresql://postgres@127.0.0.1:{relay.port}/test"
        relay.cut()       # drop every connection, refuse new ones
        relay.restore()   # accept again

Runs in a daemon thread of its own (threads and blocking sockets: simple, and
independent of any event loop under test). Also runnable for the benchmark:
`python -m tests.fakes.tcprelay --target 127.0.0.1:5432 --port 15432`.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import threading
from types import TracebackType


class TcpRelay:
    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port: int = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []

    def start(self) -> TcpRelay:
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()
        return self

    def cut(self) -> None:
        """Drop all connections now and refuse new ones until restore()."""
        self._up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._up.set()

    def stop(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # an outage: the connection is refused at once
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                if (a, b) in self._pairs:
                    self._pairs.remove((a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description="A cuttable TCP relay (SIGUSR1 cuts, SIGUSR2 restores).")
    parser.add_argument("--target", default="127.0.0.1:5432")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    relay = TcpRelay(host, int(port), port=args.port).start()
    import signal

    signal.signal(signal.SIGUSR1, lambda *_: relay.cut())
    signal.signal(signal.SIGUSR2, lambda *_: relay.restore())
    print(f"relay 127.0.0.1:{relay.port} -> {args.target}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
