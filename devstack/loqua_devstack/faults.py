"""Network faults for tests: a TCP proxy on 127.0.0.1 that can blackhole like a partition.

``blackhole()`` makes the proxy accept and read but never answer or forward — not a refusal, not a
reset: packets "simply stop", on open connections and on new ones, the way a network partition
looks to a client. ``heal()`` forwards again (new connections; blackholed ones stay dead, as their
peers have given up). Threads only; everything listens on loopback and stops on ``close()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class BlackholeProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._blackholed = threading.Event()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)

    def start(self) -> BlackholeProxy:
        self._thread.start()
        return self

    def blackhole(self) -> None:
        self._blackholed.set()

    def heal(self) -> None:
        self._blackholed.clear()

    @property
    def blackholed(self) -> bool:
        return self._blackholed.is_set()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            if self._blackholed.is_set():
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _swallow(self, sock: socket.socket) -> None:
        """Read and discard until the peer gives up."""
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._blackholed.is_set():
                    continue  # read, never forward: the other side hears nothing
                dst.sendall(data)
        except OSError:
            pass
        if not self._blackholed.is_set():
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def __enter__(self) -> BlackholeProxy:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
