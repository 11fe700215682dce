"""An HTTP exchange (httpx) bounded as a whole: connect, headers and body within one deadline.

httpx's timeouts bound each operation (the connect, each read), not the exchange: a server that
sends its status line, headers or body a byte at a time resets the read timeout with every byte
and is never timed out. `Deadline` bounds the whole of it:

    deadline = Deadline(timeout, stop=cancelled)   # the clock starts here (a lookup counts)
    with deadline, client.stream("GET", url, timeout=deadline.left(), extensions=deadline.extensions) as r:
        body = r.read()
    deadline.check()                               # a body cut short by the deadline is not whole

While the `with` block runs, a watchdog thread shuts the exchange's socket down when the deadline
passes or `stop()` turns true (asked every TICK s): that wakes a blocked read at once, and the
error it gives is raised as `httpx.ReadTimeout` (the deadline) or `Stopped` (`stop`). The socket is
learnt from httpcore's `trace` extension when the connection is made, so each exchange needs a
connection of its own (no keep-alive reuse). The connect (and a TLS handshake) is bounded by
httpx's own connect timeout: pass `timeout=deadline.left()`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import httpx

TICK = 0.1
_CONNECTED = ("connection.connect_tcp.complete", "connection.start_tls.complete")


class Stopped(Exception):
    """The exchange was cut short because its caller stopped waiting (`stop()` turned true)."""


class Deadline:
    """One exchange's overall deadline, `timeout` seconds from now; see the module's docstring."""

    def __init__(self, timeout: float, stop: Callable[[], bool] | None = None) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.extensions: dict[str, Any] = {"trace": self._trace}
        self.cut: Literal["deadline", "stop"] | None = None
        """Why the socket was shut down, once it was."""
        self._stop = stop
        self._why: Literal["deadline", "stop"] | None = None
        self._stream: Any = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def left(self) -> float:
        """The seconds left (at least 1 ms: httpx takes 0 as no timeout at all)."""
        return max(0.001, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise as the `with` block would have, if the exchange was cut short."""
        if self.cut == "stop":
            raise Stopped("the caller stopped waiting")
        if self.cut == "deadline":
            raise httpx.ReadTimeout(f"no whole answer within {self.timeout:g}s")

    def __enter__(self) -> Deadline:
        threading.Thread(target=self._watch, name="http-deadline", daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:  # from now on nothing is shut down: the socket may be another's
            self._done.set()
            self._stream = None
        if isinstance(exc, httpx.HTTPError):
            try:
                self.check()
            except (Stopped, httpx.ReadTimeout) as cut:
                raise cut from exc

    def _watch(self) -> None:
        why: Literal["deadline", "stop"]
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                why = "deadline"
                break
            if self._stop is not None and self._stop():
                why = "stop"
                break
            if self._done.wait(left if self._stop is None else min(left, TICK)):
                return
        with self._lock:
            if not self._done.is_set():
                self._why = why
                self._shut()

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event in _CONNECTED:
            with self._lock:
                self._stream = info.get("return_value")
                if self._why is not None:  # connected just after the deadline
                    self._shut()

    def _shut(self) -> None:
        """Shut the socket down (called with the lock held): a read blocked on it returns."""
        sock = getattr(self._stream, "get_extra_info", lambda _: None)("socket")
        if isinstance(sock, socket.socket) and self.cut is None:
            with contextlib.suppress(OSError):  # not SSLSocket.shutdown: it drops the TLS state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
                self.cut = self._why
