"""A TCP proxy on loopback in front of a real server, for fault tests: it forwards both ways until
a direction has carried its byte budget, then stops forwarding that way and keeps the connection
open (a server that stalls mid-transfer: TCP alive, keepalives unanswered); `silent=True` accepts
connections and never forwards a byte (a server that accepts TCP and sends no SSH banner);
`down_rate` (bytes per second) forwards the server's bytes slowly but steadily (a slow link). Only
the first connection is throttled, unless `every_connection` (a warm helper's connection, too).
`hold()` stalls every connection at once, both ways, from then on (a server paused mid-session).
`ClosingPort` accepts each connection and closes it at once (a QEMU port forward for a guest whose
sshd is not up), counting them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class StallProxy:
    def __init__(
        self,
        target_port: int,
        *,
        down_budget: int | None = None,
        up_budget: int | None = None,
        silent: bool = False,
        down_rate: int | None = None,
        every_connection: bool = False,
    ) -> None:
        self.target_port = target_port
        self.budgets = {"down": down_budget, "up": up_budget}
        self.silent = silent
        self.down_rate = down_rate
        self.every_connection = every_connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.accepts: list[float] = []
        """When each connection came (time.monotonic())."""
        self.stalled = threading.Event()
        self.held = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.accepts.append(time.monotonic())
            if not self._keep(client) or self.silent:
                continue
            # Only the first connection is throttled: a reconnection (to remove a partial
            # upload, say) reaches the server as usual.
            throttled = self.accepted == 1 or self.every_connection
            budgets = self.budgets if throttled else {"down": None, "up": None}
            if not self._keep(socket.create_connection(("127.0.0.1", self.target_port))):
                return
            server = self._sockets[-1]
            down = (server, client, budgets["down"], self.down_rate if throttled else None)
            threading.Thread(target=self._pump, args=(client, server, budgets["up"]), daemon=True).start()
            threading.Thread(target=self._pump, args=down, daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, budget: int | None, rate: int | None = None
    ) -> None:
        sent = 0
        while True:
            try:
                data = src.recv(16384 if rate else 65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if self.held.is_set() or (budget is not None and sent + len(data) > budget):
                self.stalled.set()
                while not self._closed:  # hold the connection open, forward nothing more
                    with contextlib.suppress(OSError):
                        if not src.recv(65536):
                            break
                return
            sent += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return
            if rate:
                time.sleep(len(data) / rate)

    def hold(self) -> None:
        self.held.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(5)


class ClosingPort:
    """A loopback port that accepts each connection and closes it, at once or `after` seconds
    (what the client sent meanwhile unread: the close is a reset); `accepted` counts them."""

    def __init__(self, after: float = 0.0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.after = after
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            time.sleep(self.after)
            peer.close()

    def close(self) -> None:
        self.listener.close()
