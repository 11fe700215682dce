"""Real endpoints on loopback for the health checks: each way a service can be there or not.

- `HttpEndpoint(routes)`: a real HTTP/1.1 server (http.server, threaded); `routes` maps a path to
  `(status, body)` for GET, and may be changed while it runs; `.down()` / `.up()` close and
  reopen the listening socket on the same port. `aloha_server_routes()`, `hatchet_health_routes()`
  follow the contracts in DESIGN.md (Aloha's `GET /` text; hatchet-lite's `/live`, `/ready`,
  `/version`).
- `RawListener(mode)`: a TCP listener that, for each connection, `silent`: accepts and never
  answers; `close`: accepts and closes at once with no bytes (a QEMU user-mode forward with
  nothing behind it); `banner`: sends `banner` bytes first (e.g. an SSH banner, a wrong service).
- `closed_port()`: a port nothing listens on (connections are refused).
"""

from __future__ import annotations

import abc
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Routes = dict[str, tuple[int, str]]
ALOHA_OK = "Aloha API server is running"


def aloha_server_routes() -> Routes:
    return {"/": (200, ALOHA_OK)}


def hatchet_health_routes(version: str = "v0.80.0") -> Routes:
    return {"/live": (200, "OK"), "/ready": (200, "OK"), "/version": (200, json.dumps({"version": version}))}


class HttpEndpoint:
    def __init__(self, routes: Routes | None = None, *, port: int = 0) -> None:
        self.routes: Routes = dict(routes or {})
        self.requests: list[tuple[str, str]] = []
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self.up()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                endpoint.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, body = endpoint.routes.get(self.path, (404, "<html>Not Found</html>"))
                data = body.encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "text/plain" if not body.startswith("{") else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler(), bind_and_activate=False)
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class ThreadedServer(abc.ABC):
    """A loopback TCP server: each connection is answered by `answer(conn)` in a thread of its
    own and held until `close()` (a subclass sets its own attributes before calling __init__)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    @abc.abstractmethod
    def answer(self, conn: socket.socket) -> None:
        """Answer one connection (each in a thread of its own)."""

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class RawListener:
    def __init__(self, mode: str, banner: bytes = b"") -> None:
        self.mode = mode
        self.banner = banner
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = False
        self._lock = threading.Lock()  # a connection accepted while closing is closed too
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self._stop:
                    conn.close()
                    return
                if self.mode != "close":
                    self.held.append(conn)
            if self.mode == "close":
                conn.close()
            elif self.mode == "banner":
                with contextlib.suppress(OSError):
                    conn.sendall(self.banner)
            elif self.mode in ("endless", "trickle"):  # an HTTP 200 whose body never ends
                threading.Thread(target=self._stream, args=(conn,), daemon=True).start()
            # silent: held open, never answered

    def _stream(self, conn: socket.socket) -> None:
        """`endless`: 64 KiB pieces as fast as they go; `trickle`: a byte every 0.1 s."""
        with contextlib.suppress(OSError):
            conn.recv(65536)  # the request
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            while not self._stop:
                if self.mode == "endless":
                    conn.sendall(b"x" * 65536)
                else:
                    conn.sendall(b"x")
                    time.sleep(0.1)

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def endpoints() -> Iterator[list[Any]]:
    """A list the test appends its endpoints to; each is closed at the end."""
    made: list[Any] = []
    yield made
    for item in made:
        if isinstance(item, HttpEndpoint):
            item.down()
        else:
            item.close()
