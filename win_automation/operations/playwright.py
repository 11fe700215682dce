"""The browser on the VM: where its Playwright server is, its health, and browser sessions for steps.

- `endpoint(config)`: the server as this process reaches it: `playwright.host:port` directly (the
  VM's forwarded port, the default) or through a port forward on the SSH connection to the VM's
  loopback (`ssh.forward_services`, see operations.endpoints), with the wsPath from
  `WIN_AUTOMATION_PLAYWRIGHT_WS_PATH`.
- `health(config) -> PlaywrightHealth`: reachable, wsPath accepted, client and server versions,
  connect and new-page latency; it never raises for a server that is down, refuses or mismatches:
  it reports the cause and the fix (the supervisor and `doctor` call it).
- `browser_session(...)`: one connected browser and one fresh context for a step, with tracing
  when asked; whatever happens the context is closed, and a failure still leaves the trace and
  the page's screenshot in the job's artifacts (type `playwright`), named in the error. The
  calls Playwright keeps no timeout for (opening the context and page, the trace) are bounded by
  the job's timeout, closing (after a failure: with the cleanup) by CLOSE_TIMEOUT: a wedged
  browser drops the session (124). With `job_timeout` (a screenshot job) the whole session, from the
  connect on, is bounded too: its calls get what is left of it, and the session is dropped
  JOB_GRACE seconds past it (Playwright's own timeouts come late from a wedged browser: a
  screenshot's by ~6 s).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from win_automation import metrics
from win_automation.adapters.playwright import (
    BrowserSession,
    Endpoint,
    client_version,
    is_closed_error,
    open_browser,
    translate,
)
from win_automation.config import Config
from win_automation.definition import ArtifactSink
from win_automation.errors import ConfigError, OperationTimeout, VersionMismatch, WinAutomationError
from win_automation.operations.endpoints import service_address

WS_PATH_ENV = "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH"
CLOSE_TIMEOUT = 5.0
"""Seconds that closing a job's context may take; after a failure, its cleanup (the trace, the
page's screenshot) and closing, together."""
JOB_GRACE = 2.0
"""Seconds past a bounded job's timeout for its cleanup (its trace, its screenshot, closing) and
for a server slow to report its own timeout; then the session is dropped."""
INSTALL_FIX = "`win-automation playwright install` (it prints the export line for " + WS_PATH_ENV + ")"


def endpoint(config: Config) -> Endpoint:
    """The server's endpoint; ConfigError when the wsPath is not set."""
    secret = config.playwright.ws_path
    if secret is None or not secret.get_secret_value().strip("/"):
        raise ConfigError(
            f"playwright.ws_path is not set; fix: export {WS_PATH_ENV}, printed by {INSTALL_FIX}"
        )
    host, port, via = _address(config)
    return Endpoint(host, port, secret.get_secret_value().strip("/"), via)


def _address(config: Config) -> tuple[str, int, str]:
    host, port = service_address(config, config.playwright.host, config.playwright.port)
    return host, port, "ssh" if config.ssh.forward_services else "direct"


@dataclass
class PlaywrightHealth:
    """What `playwright health` reports; `ok` with no cause, or the cause and its fix."""

    ok: bool
    endpoint: str
    client_version: str
    server_version: str | None = None
    connect_ms: float | None = None
    new_page_ms: float | None = None
    cause: str | None = None
    fix: str | None = None
    via: str = "direct"
    exit_code: int = 0
    """0 when ok; else the error's code: 2 no or wrong wsPath, version mismatch; 3 unreachable,
    or no answer within the deadline."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def health(config: Config, *, timeout: float = 10.0) -> PlaywrightHealth:
    """Connect, open a page, close: never raises for an unreachable, refusing or mismatched server."""
    client = client_version()
    report = PlaywrightHealth(False, f"{config.playwright.host}:{config.playwright.port}", client)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        target = endpoint(config)
        report.endpoint, report.via = target.describe(), target.via
        with open_browser(
            target,
            timeout=timeout,
            retry=False,
            stall_timeout=config.playwright.stall_timeout,
            give_up=lambda: time.monotonic() > deadline,  # a server that stalls after the connect
        ) as session:
            report.connect_ms = round((time.perf_counter() - started) * 1000, 1)
            report.server_version = session.server_version
            page_started = time.perf_counter()
            context = session.new_context()
            try:
                context.new_page()
                report.new_page_ms = round((time.perf_counter() - page_started) * 1000, 1)
            finally:
                _close_quietly(context)
        report.ok = True
    except WinAutomationError as exc:
        if isinstance(exc, VersionMismatch):
            report.server_version = exc.server
        report.cause, report.fix = split_fix(str(exc))
        report.exit_code = 3 if isinstance(exc, OperationTimeout) else exc.exit_code
    return report


def split_fix(message: str) -> tuple[str, str]:
    """`cause; fix: what to do` -> (cause, fix); a message with no fix gets the generic one."""
    cause, sep, fix = message.partition("; fix: ")
    return cause, fix if sep else "run `win-automation playwright install`, then `playwright health`"


def _close_quietly(context: Any) -> None:
    with suppress(Exception):  # the server may be gone; the context dies with it
        context.close()


def _left(deadline: float | None, seconds: float) -> float:
    """A call's timeout: `seconds`, or what is left before `deadline` when that is less (never 0:
    to Playwright 0 is no timeout at all)."""
    if deadline is None:
        return seconds
    return max(min(seconds, deadline - time.monotonic()), 0.001)


@dataclass
class BrowserJob:
    """One step's browser: its context and page, and the artifacts written so far."""

    session: BrowserSession
    context: Any
    page: Any
    artifacts: ArtifactSink
    written: list[str] = field(default_factory=list)
    stalled: bool = False
    """No screenshot would come (the page never finished loading, or a screenshot failed): none
    is taken after a failure."""
    deadline: float | None = None
    """When the whole job must be over (time.monotonic()), or None: only its calls are bounded."""

    def left(self, seconds: float) -> float:
        """A call's timeout: `seconds`, or what is left of the job's when that is less."""
        return _left(self.deadline, seconds)

    def save(self, name: str, data: bytes | str) -> None:
        """Write an artifact of type `playwright` into the job's folder (and its manifest)."""
        if isinstance(data, str):
            self.artifacts.write_text("playwright", name, data)
        else:
            self.artifacts.write_bytes("playwright", name, data)
        if name not in self.written:
            self.written.append(name)

    def screenshot(self, *, full_page: bool = False, timeout: float = 30.0) -> bytes:
        try:
            data: bytes = self.page.screenshot(full_page=full_page, timeout=self.left(timeout) * 1000)
        except Exception as exc:
            self.stalled = True  # another try after the failure would wait as long
            err = self.error(exc, "screenshot")
            if isinstance(err, OperationTimeout) and self.session.dropped is None:
                err = OperationTimeout(  # Playwright's own timeout, from a server still answering
                    f"screenshot: not taken within {timeout:g}s (the page or its browser busy?); fix: "
                    "`win-automation playwright health`, or raise --timeout"
                )
            raise err from None
        self.save("screenshot.png", data)
        return data

    def error(self, exc: BaseException, doing: str) -> WinAutomationError:
        """The project's error for `exc`, raised while `doing`."""
        if isinstance(exc, WinAutomationError):
            return exc
        if (dropped := self.session.dropped_error(doing)) is not None:
            return dropped  # the watchdog dropped the session: what failed says nothing more
        if self.server_gone(exc):
            return translate(exc, self.session.endpoint, doing=doing, lost=True)
        return translate(exc, self.session.endpoint, doing=doing)

    def server_gone(self, exc: BaseException) -> bool:
        """Whether `exc` came from losing the server (not, say, a script closing its own page)."""
        if self.session.lost:
            return True
        if not is_closed_error(exc):
            return False
        try:  # the client may not have noticed yet (its `disconnected` event comes late): ask
            with self.session.bounded(CLOSE_TIMEOUT):
                self.session.browser.new_context().close()
        except Exception:
            return True
        return False


@contextmanager
def browser_session(
    config: Config,
    artifacts: ArtifactSink,
    *,
    trace: bool = False,
    timeout: float = 30.0,
    job_timeout: float | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[BrowserJob]:
    """A connected browser with a fresh context and page; closed whatever happens. On failure the
    trace and (unless `stalled`) the page's screenshot are kept, and the error lists the
    artifacts. The session is dropped, and the call under way fails, once `cancelled()` turns
    true (the job's cancel or deadline), the server stops answering (`playwright.stall_timeout`),
    or, with `job_timeout`, JOB_GRACE seconds after that many from the connect."""
    target = endpoint(config)
    stall = config.playwright.stall_timeout
    with open_browser(target, timeout=timeout, stall_timeout=stall, give_up=cancelled) as session:
        metrics.inc("playwright_sessions_total")
        deadline = None if job_timeout is None else time.monotonic() + job_timeout
        whole: AbstractContextManager[None] = nullcontext()
        if job_timeout is not None:
            whole = session.bounded(job_timeout + JOB_GRACE, said=job_timeout)
        with whole:
            with session.bounded(_left(deadline, timeout), said=job_timeout or timeout):
                context = session.new_context()
            job = BrowserJob(session, context, None, artifacts, deadline=deadline)
            try:
                with session.bounded(job.left(timeout), said=job_timeout or timeout):
                    if trace:
                        context.tracing.start(screenshots=True, snapshots=True, sources=False)
                    job.page = context.new_page()
                    job.page.set_default_timeout(timeout * 1000)
                yield job
                if trace:
                    try:
                        with session.bounded(max(timeout, CLOSE_TIMEOUT)):  # the zip comes back to us
                            _stop_trace(job)
                    except Exception as exc:
                        raise job.error(exc, "saving the trace") from None
            except BaseException as exc:
                err = job.error(exc, "the job") if isinstance(exc, Exception) else None
                with session.bounded(CLOSE_TIMEOUT):  # one budget: a wedged browser holds each step
                    if not session.lost:
                        _keep_what_is_left(job, trace)
                    _close_quietly(context)
                if err is None:
                    raise
                if job.written:
                    err.message = f"{err.message} (kept: {', '.join(job.written)})"
                raise err from None
            with session.bounded(CLOSE_TIMEOUT):
                _close_quietly(context)


def _keep_what_is_left(job: BrowserJob, trace: bool) -> None:
    """After a failure: the trace, then the page's screenshot. The trace first: the server keeps
    it, so a wedged browser does not hold it up, while a screenshot waits for the browser."""
    if trace:
        with suppress(Exception):
            _stop_trace(job)
    if "screenshot.png" not in job.written and job.page is not None and not job.stalled:
        with suppress(Exception):  # the page may be unusable: keep what we have
            job.save("screenshot.png", job.page.screenshot(timeout=CLOSE_TIMEOUT * 1000))


def _stop_trace(job: BrowserJob) -> None:
    with tempfile.TemporaryDirectory(prefix="wa-trace-") as tmp:
        path = Path(tmp) / "trace.zip"
        job.context.tracing.stop(path=str(path))
        job.artifacts.write_file("playwright", "trace.zip", path)
        job.written.append("trace.zip")
