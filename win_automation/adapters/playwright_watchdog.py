"""The watchdog of a Playwright session (win_automation.adapters.playwright.open_browser).

Playwright keeps its action timeouts in the server: a server that stops answering (paused,
wedged: its port still accepts) would leave a call waiting for good. So while a session is
open, the watchdog sends the server a plain HTTP request every PROBE_EVERY seconds (not the
wsPath: the server's 403 is an answer), and kills this process's Playwright driver once none has
been answered for `stall_timeout` seconds, or once `give_up()` turns true (the job's cancel or
deadline): the blocked call then fails, and `dropped` says why. The server (Node) answers even
when the browser under it is wedged, and keeps no timeout for some calls (opening a context or a
page, closing one, the trace): those run under `bound(seconds)`, past which the session is
dropped too. A driver that has not exited CLOSE_GRACE seconds after its session ends is killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from win_automation.errors import NoAnswer, OperationTimeout, WinAutomationError

if TYPE_CHECKING:
    from win_automation.adapters.playwright import Endpoint

log = logging.getLogger(__name__)

PROBE_EVERY = 2.0
"""Seconds between the watchdog's HTTP requests to the server."""


CLOSE_GRACE = 2.0
"""Seconds the driver has to exit once its session is over, before it is killed: one stuck
(on a name lookup that does not end, say) would hold the caller's own exit."""


class Watchdog:
    """Kills the local Playwright driver (`pid`) once `give_up()` turns true or the server at
    `endpoint` has answered no HTTP request for `stall_timeout` seconds, or once a `bound()`
    block has run past its seconds (`dropped` then says which: "gave up", "stalled", "timed
    out"), or once it has not exited CLOSE_GRACE seconds after
    `closing()`. Two daemon threads: one asks the server, one decides (a probe that hangs does
    not delay a cancel)."""

    def __init__(
        self, pid: int | None, endpoint: Endpoint, stall_timeout: float, give_up: Callable[[], bool]
    ) -> None:
        self.pid, self.endpoint, self.stall_timeout, self.give_up = pid, endpoint, stall_timeout, give_up
        self.dropped: str | None = None
        self.killed = False
        self._answered = time.monotonic()
        self._closing_by: float | None = None
        self._bound_by: float | None = None
        self._bound = self._said = 0.0
        self._done = threading.Event()
        for target, name in ((self._probe, "playwright-probe"), (self._decide, "playwright-watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _probe(self) -> None:
        from win_automation.adapters.probe import probe_http

        url = f"http://{self.endpoint.host}:{self.endpoint.port}/"  # not the wsPath: a 403 answers
        while self._closing_by is None and not self._done.is_set():
            if probe_http(url, min(PROBE_EVERY, self.stall_timeout)).kind in ("ok", "http_status"):
                self._answered = time.monotonic()
            self._done.wait(PROBE_EVERY)

    def _decide(self) -> None:
        while not self._done.wait(0.1):
            if self._closing_by is not None:
                if time.monotonic() > self._closing_by:
                    self._kill()
                    return
            elif self.give_up():
                self._drop("gave up")
                return
            elif self._bound_by is not None and time.monotonic() > self._bound_by:
                self._said = self._bound  # the bound that ran out: its block may have ended since
                self._drop("timed out")
                return
            elif time.monotonic() - self._answered > self.stall_timeout:
                self._drop("stalled")
                return

    def _drop(self, why: str) -> None:
        self.dropped = why
        log.log(  # a cancel or deadline is the caller's to tell; a server that stalled is news
            logging.WARNING if why == "stalled" else logging.INFO,
            "dropping the Playwright session",
            extra={"op": "playwright.watchdog", "why": why, "endpoint": self.endpoint.describe()},
        )
        self._kill()

    def _kill(self) -> None:
        self.killed = True
        if self.pid is not None:
            with suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    @contextmanager
    def bound(self, seconds: float, *, said: float | None = None) -> Iterator[None]:
        """Drop the session ("timed out") if the block has not ended within `seconds`; its error
        says `said` (a job's timeout, when `seconds` is what is left of it plus a grace). Nested
        bounds keep the earliest: an inner one never extends the job's."""
        outer = self._bound, self._bound_by
        by = time.monotonic() + seconds
        if self._bound_by is None or by < self._bound_by:
            self._bound, self._bound_by = (seconds if said is None else said), by
        try:
            yield
        finally:
            self._bound, self._bound_by = outer

    def closing(self) -> None:
        """The session is over: from now on only a driver that does not exit is killed."""
        self._closing_by = time.monotonic() + CLOSE_GRACE

    def stop(self) -> None:
        self._done.set()

    def error(self, doing: str) -> WinAutomationError:
        """What a call that failed because the session was dropped raises."""
        where = f"the Playwright server at {self.endpoint.describe()}"
        if self.dropped == "stalled":
            return NoAnswer(
                f"{where} stopped answering ({doing}): no answer for {self.stall_timeout:g}s (paused or"
                " wedged?), so the session was dropped; fix: `win-automation playwright health`, restart"
                " the server with `win-automation playwright install`"
            )
        if self.dropped == "timed out":
            return OperationTimeout(
                f"{doing}: no answer from {where} within {self._said:g}s (its browser wedged?), so the"
                " session was dropped; fix: `win-automation playwright health`, restart the server with"
                " `win-automation playwright install`"
            )
        return OperationTimeout(f"{doing}: no answer from {where} within the deadline")


def forget_killed_driver(manager: Any) -> None:
    """After a driver was killed: the call the kill broke stays an unawaited coroutine, and its
    death an error on playwright's transport (`Connection closed while reading from the
    driver`) that nobody awaits after the start, and the tasks and futures of a connection it
    cut (`Task was destroyed but it is pending!`); left, asyncio would log them whenever they are
    collected. The session's event loop is its own and over: its errors are dropped."""
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    with suppress(AttributeError):
        manager._loop.set_exception_handler(lambda _loop, _context: None)
    with suppress(AttributeError, asyncio.InvalidStateError, asyncio.CancelledError):
        future = manager._client._transport.on_error_future
        if future.done():
            future.exception()


def driver_pid(manager: Any) -> int | None:
    """The pid of the Node driver sync_playwright() started (playwright's internals, pinned to
    one minor by pyproject.toml; tests/test_playwright_stall.py fails if it is not found)."""
    try:
        return int(manager._client._transport._proc.pid)
    except (AttributeError, TypeError, ValueError):
        return None
