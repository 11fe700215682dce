"""A stand-in HTTP service on loopback that takes queued faults (tests/aloha_standin.py's base).

`StandIn` subclasses say how they answer (`answer`); every request is recorded (`requests`, and its
`headers`), and queued `faults` replace the answer of the next matching request: a status and
body, a hang, a connection dropped with no answer, or a body trickled, endless or huge (`size`,
never held whole; `gzip`: compressed as it goes, a gzip bomb). `stop()` is a dead process: new
connections are refused, open ones dropped; `start()` comes back on the same port.
"""

from __future__ import annotations

import abc
import contextlib
import http.server
import json
import socket
import threading
import zlib
from dataclasses import dataclass
from typing import Any

HTML_500 = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error.</p>\n"
)
HTML_404 = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server.</p>\n"
)


@dataclass
class Fault:
    """What the next request to `route` (None: any) gets instead of its answer."""

    route: str | None = None
    status: int = 500
    body: str = HTML_500
    content_type: str = "text/html; charset=utf-8"
    hang: float = 0.0  # seconds to wait before answering (or dropping)
    drop: bool = False  # close the connection with no answer
    trickle: float = 0.0  # seconds between the body's bytes, sent one at a time
    endless: bool = False  # a body with no length that never ends (until the client hangs up)
    size: int = 0  # a JSON body of this many bytes, with its length, sent in 64 KiB pieces
    gzip: bool = False  # the `size` body gzip-compressed as it goes (no length: the connection ends it)
    sent: int = 0  # the body's bytes written to the socket (how much of it the client read, or so)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def _send(self, status: int, body: str | dict[str, Any], content_type: str | None = None) -> None:
        if isinstance(body, dict):
            data, content_type = json.dumps(body).encode(), content_type or "application/json"
        else:
            data, content_type = body.encode(), content_type or "text/html; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, fault: Fault) -> None:
        """The body one byte every `fault.trickle` s, or 64 KiB pieces: for ever (`endless`), or
        `size` bytes of a JSON array (never held whole; `gzip`: compressed, a gzip bomb)."""
        data = fault.body.encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", fault.content_type)
        if fault.endless or fault.gzip:
            self.send_header("Connection", "close")  # the body ends when the connection does
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(fault.size or len(data)))
        if fault.gzip:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        packer = zlib.compressobj(9, zlib.DEFLATED, 31) if fault.gzip else None
        packed = bytearray()  # compressed, sent 64 KiB at a time: as a server fills its segments

        def write(chunk: bytes) -> None:
            if packer is None:
                self.wfile.write(chunk)
                return
            packed.extend(packer.compress(chunk))
            if len(packed) >= 65536:
                self.wfile.write(bytes(packed))
                packed.clear()

        closing = self.server.owner.closing
        with contextlib.suppress(OSError):
            piece = b"[" + b"0," * 32767 + b"0"
            if fault.endless:
                while not closing.is_set():
                    self.wfile.write(piece)
                    fault.sent += len(piece)
            if fault.size:
                left = fault.size - 3  # between "[" and "0]"
                write(b"[")
                while left > 0 and not closing.is_set():
                    chunk = b"0," * min(32768, left // 2) or b" " * left
                    write(chunk)
                    fault.sent, left = fault.sent + len(chunk), left - len(chunk)
                write(b"0]")
                if packer is not None:
                    self.wfile.write(bytes(packed) + packer.flush())
                return
            for byte in data:
                if closing.wait(fault.trickle):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

    def _handle(self, method: str) -> None:
        body = self._body() if method == "POST" else None
        owner = self.server.owner
        if owner.closing.is_set():  # stopping: a dead process answers nothing
            self.close_connection = True
            return
        owner.record(method, self.path, body)
        owner.headers.append({k.lower(): v for k, v in self.headers.items()})
        fault = owner.take_fault(self.path)
        if fault is not None:
            if fault.hang and owner.closing.wait(fault.hang):
                self.close_connection = True  # stopped while it hung: a dead process answers nothing
                return
            if fault.drop:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                return
            if fault.trickle or fault.endless or fault.size:
                self._stream(fault)
                return
            self._send(fault.status, fault.body, fault.content_type)
            return
        status, answer, content_type = owner.answer(method, self.path, body)
        self._send(status, answer, content_type)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: StandIn

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        self.owner.connections.add(conn)
        return conn, address

    def close_connections(self) -> None:
        """Drop every open (keep-alive) connection, as a process that dies would."""
        for conn in list(self.owner.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.owner.connections.clear()


class StandIn(abc.ABC):
    """A threaded HTTP server on 127.0.0.1 (a free port, or `port` to come back on the same one)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, names in lower case
        self.faults: list[Fault] = []
        self.closing = threading.Event()
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.closing.clear()
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        """Stop listening and drop open connections: new ones are refused, like a dead process."""
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            self._httpd = None

    def record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, body))

    def routes(self) -> list[str]:
        with self._lock:
            return [f"{method} {path}" for method, path, _ in self.requests]

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.route in (None, path):
                    return self.faults.pop(i)
        return None

    @abc.abstractmethod
    def answer(self, method: str, path: str, body: Any) -> tuple[int, str | dict[str, Any], str | None]:
        """The status, body and content type this service answers `method path` with."""
