"""What the browser jobs do in a session (operations.playwright.browser_session): a screenshot of a
URL, and a user's script `run(page, context, input)`.

Scripts: `check_script(text, name)` refuses, before any job is recorded, a file that is not Python
or defines no `run`; `run_script` executes it in a fresh namespace and returns what `run` returned
(it must be JSON). A script writes more artifacts with the helper (type `playwright`, in the job's
folder and manifest):

    from win_automation.operations.playwright_jobs import save_artifact
    def run(page, context, input):
        page.goto(input["url"])
        save_artifact("page.html", page.content())
        return {"title": page.title()}

Errors (each one line, naming what is wrong and the fix): a navigation that fails is exit 1, one
past its deadline OperationTimeout (124), a bad `--wait-for` selector UsageError (2), a script that
raises a plain failure (1) with its traceback in `traceback.txt`.
"""

from __future__ import annotations

import ast
import json
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from win_automation.errors import Cancelled, OperationTimeout, UsageError, WinAutomationError
from win_automation.operations.playwright import BrowserJob

MAX_RESULT_BYTES = 256 * 1024
_current: ContextVar[BrowserJob | None] = ContextVar("playwright_job", default=None)


def save_artifact(name: str, data: bytes | str) -> None:
    """From a `playwright run` script: write `name` into the job's artifact folder (and manifest)."""
    job = _current.get()
    if job is None:
        raise RuntimeError("save_artifact() works only inside a `win-automation playwright run` script")
    job.save(name, data)


@dataclass(frozen=True)
class Shot:
    final_url: str
    title: str
    size_bytes: int
    duration_ms: int


def _is_timeout(exc: BaseException) -> bool:
    return type(exc).__name__ == "TimeoutError"


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return first[0].split(": ", 1)[-1] if first else type(exc).__name__


def take_screenshot(
    job: BrowserJob,
    url: str,
    *,
    full_page: bool,
    wait_for: str | None,
    timeout: float,
    cancelled: Callable[[], bool] = lambda: False,
) -> Shot:
    """Load `url`, wait for the selector when given, write `screenshot.png`, each within what is
    left of the job's `timeout` (job.left); a cancel is seen between these calls (Cancelled)."""
    started = time.perf_counter()
    try:
        job.page.goto(url, wait_until="load", timeout=job.left(timeout) * 1000)
    except Exception as exc:
        if _is_timeout(exc):
            job.stalled = True  # a page still loading cannot be shot: keep the trace only
            raise OperationTimeout(
                f"{url} did not load within {timeout:g}s; fix: check the VM reaches it, or raise --timeout"
            ) from None
        if job.server_gone(exc):
            raise job.error(exc, "loading the page") from None
        raise WinAutomationError(
            f"{url} did not load ({_reason(exc)}); fix: check the URL and that the VM reaches it"
        ) from None
    _check(cancelled)
    if wait_for:
        wait_for_selector(job, wait_for, timeout)
        _check(cancelled)
    data = job.screenshot(full_page=full_page, timeout=timeout)
    try:
        with job.session.bounded(job.left(timeout), said=timeout):  # the title has no timeout of its own
            title = job.page.title()
    except Exception as exc:
        raise job.error(exc, "reading the title") from None
    return Shot(job.page.url, title, len(data), round((time.perf_counter() - started) * 1000))


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise Cancelled("cancelled while the browser job ran")


def wait_for_selector(job: BrowserJob, selector: str, timeout: float) -> None:
    try:
        job.page.wait_for_selector(selector, state="visible", timeout=job.left(timeout) * 1000)
    except Exception as exc:
        if _is_timeout(exc):
            raise OperationTimeout(
                f"--wait-for {selector!r}: no visible match within {timeout:g}s; "
                "fix: check the selector against the page, or raise --timeout"
            ) from None
        if job.server_gone(exc):
            raise job.error(exc, "waiting for the selector") from None
        raise UsageError(f"--wait-for {selector!r} is not a valid selector: {_reason(exc)}") from None


# scripts ----------------------------------------------------------------------------------------


def check_script(text: str, name: str) -> None:
    """UsageError unless `text` is Python defining a top-level `run` function."""
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError as exc:
        raise UsageError(
            f"SCRIPT {name} is not Python: {exc.msg} at line {exc.lineno}; fix: a .py file defining "
            "run(page, context, input)"
        ) from None
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if "run" not in defined:
        raise UsageError(f"SCRIPT {name} defines no top-level run(page, context, input); fix: add it")


@contextmanager
def _as_current(job: BrowserJob) -> Iterator[None]:
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)


def run_script(job: BrowserJob, text: str, name: str, value: Any) -> Any:
    """Execute the script and call `run(page, context, input)`; its JSON return value."""
    check_script(text, name)
    namespace: dict[str, Any] = {"__name__": "__wa_script__", "__file__": name}
    with _as_current(job):
        try:
            exec(compile(text, name, "exec"), namespace)
            run = namespace["run"]
            if not callable(run):
                raise UsageError(f"SCRIPT {name}: run is not a function")
            result = run(job.page, job.context, value)
        except WinAutomationError:
            raise
        except Exception as exc:
            if job.server_gone(exc):
                raise job.error(exc, f"running {name}") from None
            job.save("traceback.txt", traceback.format_exc())
            line = _script_line(exc, name)
            raise WinAutomationError(
                f"SCRIPT {name} raised {type(exc).__name__}{line}: {_reason(exc)}; "
                "fix: see traceback.txt (and the screenshot and trace) in the job's artifacts"
            ) from None
    try:
        encoded = json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise WinAutomationError(
            f"SCRIPT {name}: run() returned a value that is not JSON ({exc}); fix: return dicts, lists, "
            "strings, numbers, booleans or None"
        ) from None
    if len(encoded) > MAX_RESULT_BYTES:
        raise WinAutomationError(
            f"SCRIPT {name}: run() returned {len(encoded)} bytes of JSON (at most {MAX_RESULT_BYTES}); "
            "fix: write big results with save_artifact()"
        )
    return result


def _script_line(exc: BaseException, name: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    return f" at line {frames[-1].lineno}" if frames else ""
