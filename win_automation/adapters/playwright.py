"""The Playwright adapter: the only module that imports playwright.

`open_browser(endpoint, timeout)` connects Playwright for Python to a browser server
(`ws://HOST:PORT/WSPATH`, served by scripts/windows/launch-server.js) and yields a `Browser`
handle; `translate(exc, endpoint)` turns a playwright exception into the project's error, once:

- connection refused, reset or closed before the handshake: ConnectError (3, transient: retried
  by the connect policy, 3 attempts);
- HTTP 400 (wrong wsPath): ConfigError (2); HTTP 428 (client and server major.minor differ):
  VersionMismatch (2) with both versions;
- the server went away while a session ran: ConnectError naming the mid-session loss;
- a Playwright timeout: OperationTimeout (124).

A session is watched (win_automation.adapters.playwright_watchdog): a server that stops
answering, the caller's cancel or deadline, or a call under `session.bounded(seconds)` that runs
past them (a wedged browser), drops it, and the call under way fails.

The wsPath is never part of a message: playwright's own messages quote the URL, so they are never
passed on; ours name `host:port` only, and the wsPath is registered with the log redactor.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from win_automation.adapters.playwright_watchdog import Watchdog, driver_pid, forget_killed_driver
from win_automation.errors import (
    ConfigError,
    ConnectError,
    NoAnswer,
    OperationTimeout,
    VersionMismatch,
    WinAutomationError,
)
from win_automation.log import register_secret
from win_automation.retry import call_with_retry

if TYPE_CHECKING:  # playwright is imported where it is used: importing it costs ~80 ms
    from playwright.sync_api import Browser, Playwright

log = logging.getLogger(__name__)

_VERSION = r"v?(\d+\.\d+(?:\.\d+)?)"
_MISMATCH = re.compile(rf"server version: {_VERSION}.*?client version: {_VERSION}", re.S)
_CLOSED = ("has been closed", "Browser closed", "Connection closed", "Target closed", "socket hang up")


def client_version() -> str:
    """The installed `playwright` package's version (the client's)."""
    return importlib.metadata.version("playwright")


@dataclass(frozen=True)
class Endpoint:
    """Where the browser server listens, as this process reaches it (after any SSH forward)."""

    host: str
    port: int
    ws_path: str
    via: str = "direct"

    def __post_init__(self) -> None:
        register_secret(self.ws_path)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/{self.ws_path.lstrip('/')}"

    def describe(self) -> str:
        """`host:port` (and the route), never the wsPath."""
        return f"{self.host}:{self.port}" + (" through the SSH connection" if self.via == "ssh" else "")


def is_closed_error(exc: BaseException) -> bool:
    from playwright.sync_api import Error

    return isinstance(exc, Error) and any(part in str(exc) for part in _CLOSED)


_TIMED_OUT = re.compile(r"\bTimeout \d+ms exceeded")


def translate(
    exc: BaseException, endpoint: Endpoint, *, doing: str = "connect", lost: bool = False
) -> WinAutomationError:
    """The project's error for a playwright exception (its message is never passed on whole)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    where = f"the Playwright server at {endpoint.describe()}"
    text = str(exc)
    if doing == "connect" and (isinstance(exc, PlaywrightTimeout) or _TIMED_OUT.search(text)):
        # it took the connection and said nothing: silent once, silent again (not retried)
        return NoAnswer(f"connect: no answer from {where} within the deadline")
    if isinstance(exc, PlaywrightTimeout):
        return OperationTimeout(f"{doing}: no answer from {where} within the deadline")
    if " 428 " in text or "version mismatch" in text:
        found = _MISMATCH.search(text)
        server, client = (found.group(1), found.group(2)) if found else ("unknown", client_version())
        return VersionMismatch(
            f"{where} runs Playwright {server}, this client {client}: major.minor must match; "
            f"fix: `win-automation playwright install` (puts a {client} server on the VM)",
            client=client,
            server=server,
        )
    if " 400 " in text:
        return ConfigError(
            f"{where} refused the wsPath (HTTP 400); fix: set WIN_AUTOMATION_PLAYWRIGHT_WS_PATH to the "
            "value `win-automation playwright install` printed"
        )
    if "ECONNREFUSED" in text or "EHOSTUNREACH" in text or "ENOTFOUND" in text or "ETIMEDOUT" in text:
        return ConnectError(
            f"{where} is not reachable (connection refused); fix: start the WinAutomation-Playwright "
            "task with `win-automation playwright install` (idempotent), or check the port forward"
        )
    if doing != "connect" and (lost or is_closed_error(exc)):
        return ConnectError(
            f"{where} went away during the session ({doing}); fix: `win-automation playwright health`, "
            "then run the job again"
        )
    if doing == "connect":
        first = text.splitlines()[0] if text else type(exc).__name__
        reason = first.replace(endpoint.url, "ws://" + endpoint.describe()).split(": ")[-1]
        if endpoint.ws_path in reason:
            reason = "the connection failed"
        return ConnectError(
            f"{where}: the WebSocket connection failed ({reason}); fix: `win-automation playwright health`"
        )
    return WinAutomationError(f"{doing}: {_first_line(text, endpoint)}")


def _first_line(text: str, endpoint: Endpoint) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "failed"
    return first.replace(endpoint.ws_path, "***")


class BrowserSession:
    """A connected browser and the Playwright driver under it; `lost` turns true when the
    server closes the connection, or the watchdog dropped it (`dropped` says why)."""

    def __init__(
        self, playwright: Playwright, browser: Browser, endpoint: Endpoint, watchdog: Watchdog
    ) -> None:
        self.playwright = playwright
        self.browser = browser
        self.endpoint = endpoint
        self._watchdog = watchdog
        self._lost = threading.Event()
        browser.on("disconnected", lambda _browser: self._lost.set())

    @property
    def lost(self) -> bool:
        return self.dropped is not None or self._lost.is_set() or not self.browser.is_connected()

    @property
    def dropped(self) -> str | None:
        """Why the watchdog dropped the session ("stalled", "gave up"), or None."""
        return self._watchdog.dropped

    def bounded(self, seconds: float, *, said: float | None = None) -> AbstractContextManager[None]:
        """For calls Playwright keeps no timeout for (a context, a page, the trace), or whose
        timeout a wedged browser delays (a screenshot): the session is dropped, and the call fails
        (OperationTimeout, saying `said` seconds), if the block runs past `seconds`. Nested: the
        earliest holds."""
        return self._watchdog.bound(seconds, said=said)

    def dropped_error(self, doing: str) -> WinAutomationError | None:
        """The error of a call that failed because the session was dropped; None if it was not."""
        return None if self._watchdog.dropped is None else self._watchdog.error(doing)

    @property
    def server_version(self) -> str:
        """What the server accepted: our major.minor (it refuses any other)."""
        return ".".join(client_version().split(".")[:2])

    def new_context(self, **options: Any) -> Any:
        from playwright.sync_api import Error

        try:
            return self.browser.new_context(**options)
        except Error as exc:
            raise self.dropped_error("new context") or translate(
                exc, self.endpoint, doing="new context"
            ) from None


def _connect(playwright: Playwright, endpoint: Endpoint, timeout: float) -> Browser:
    from playwright.sync_api import Error

    try:
        return playwright.chromium.connect(endpoint.url, timeout=timeout * 1000)
    except Error as exc:
        raise translate(exc, endpoint) from None


@contextmanager
def open_browser(
    endpoint: Endpoint,
    *,
    timeout: float = 30.0,
    retry: bool = True,
    stall_timeout: float = 15.0,
    give_up: Callable[[], bool] = lambda: False,
) -> Iterator[BrowserSession]:
    """Connect to the server (retrying refusals under the connect policy) and close everything
    after; the session is dropped (its calls fail) once `give_up()` turns true or the server
    stops answering for `stall_timeout` seconds."""
    from playwright.sync_api import Error, sync_playwright

    try:
        manager = sync_playwright()
        playwright = manager.start()
    except Error as exc:
        reason = _first_line(str(exc), endpoint)
        raise WinAutomationError(f"cannot start the Playwright driver: {reason}") from None
    watchdog = Watchdog(driver_pid(manager), endpoint, stall_timeout, give_up)
    try:

        def connect() -> Browser:
            if watchdog.dropped is not None:  # the driver is gone: no attempt can succeed
                raise watchdog.error("connect")
            try:
                return _connect(playwright, endpoint, timeout)
            except WinAutomationError:
                if watchdog.dropped is not None:
                    raise watchdog.error("connect") from None
                raise

        browser = call_with_retry(connect, op="playwright.connect") if retry else connect()
        session = BrowserSession(playwright, browser, endpoint, watchdog)
        try:
            yield session
        finally:
            with suppress(Error):
                browser.close()  # a call to the server too: the watchdog still watches it
    finally:
        watchdog.closing()
        try:
            with suppress(Error):
                manager.__exit__(None, None, None)
        finally:
            watchdog.stop()
            if watchdog.killed:
                forget_killed_driver(manager)
