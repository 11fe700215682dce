"""Browser jobs whose browser is paused (SIGSTOP of every Chromium process under the real
launch-server.js; its Node still answers): before the page is opened, mid-load, and while the
screenshot is being taken. A `playwright screenshot` job ends within its `--timeout` plus
JOB_GRACE from the connect on, exit 124, one line, the job recorded as failed with 124, and only
whole artifacts, each in the manifest; a `playwright run` job's cleanup after its script failed
takes CLOSE_TIMEOUT at most, all of it together.

The pause comes from the page's own requests (tests/fixture_playwright.py: `/pause-load`,
`/pause-shot`), at the moment the browser is in that call, and is undone (SIGCONT) after."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_jobs import list_jobs
from fixture_playwright import PlaywrightServer, WebServer

from win_automation.operations.playwright import CLOSE_TIMEOUT, JOB_GRACE

TIMEOUT = 3.0
EXIT_SLACK = 2.5
"""Seconds for what follows the drop: the job's record, the process's exit (2 busy cores)."""
START_SLACK = 6.0
"""Seconds for the CLI's start and the connect, on top of the bounds measured from a pause."""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PausedBrowser:
    """A server of the test's own (the shared one must never be paused) whose Chromium processes
    `pause()` stops, all of them: the browser, its renderers, GPU and network processes."""

    def __init__(self) -> None:
        self.server = PlaywrightServer().start()
        self.stopped: list[int] = []
        self.paused_at: float | None = None

    def pause(self) -> None:
        assert self.server.proc is not None
        for pid in descendants(self.server.proc.pid):
            with contextlib.suppress(OSError):
                if b"chrom" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGSTOP)
                    self.stopped.append(pid)
        assert self.stopped, "no Chromium under the server"
        self.paused_at = time.monotonic()

    def close(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.server.close()


@pytest.fixture
def paused(web: WebServer) -> Iterator[PausedBrowser]:
    browser = PausedBrowser()
    web.httpd.pause = browser.pause  # type: ignore[attr-defined]
    try:
        yield browser
    finally:
        web.httpd.pause = None  # type: ignore[attr-defined]
        browser.close()


def run_cli(
    env: dict[str, str], tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "win_automation", "playwright", *args, "--timeout", f"{TIMEOUT:g}s"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res, started


def artifacts_of(tmp_path: Path) -> tuple[set[str], set[str]]:
    """(the manifest's names, the files in the job's folder other than the manifest)."""
    folders = [p for p in (tmp_path / "artifacts").glob("*") if p.is_dir()]
    if not folders:
        return set(), set()
    (folder,) = folders
    files = {p.name for p in folder.iterdir() if p.name != "manifest.json"}
    if not (folder / "manifest.json").exists():
        return set(), files
    manifest = json.loads((folder / "manifest.json").read_text())
    return {a["path"] for a in manifest["artifacts"]}, files


def assert_timed_out(
    res: subprocess.CompletedProcess[str], env: dict[str, str], tmp_path: Path, needle: str, ws_path: str
) -> None:
    assert res.returncode == 124, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr and ws_path not in res.stderr
    job = list_jobs(env, tmp_path)[0]
    assert job["state"] == "failed" and job["exit_code"] == 124 and needle in job["error"], job


def test_paused_before_the_page_is_opened(
    cli_env: dict[str, str], paused: PausedBrowser, web: WebServer, tmp_path: Path
) -> None:
    env = {**cli_env, **paused.server.env()}
    paused.pause()
    res, started = run_cli(env, tmp_path, "screenshot", web.url("/"), "--trace")
    took = time.monotonic() - started
    assert_timed_out(
        res,
        env,
        tmp_path,
        f"new context: no answer from the Playwright server at 127.0.0.1:{paused.server.port} "
        f"within {TIMEOUT:g}s (its browser wedged?)",
        paused.server.ws_path,
    )
    assert took < TIMEOUT + START_SLACK, took
    assert artifacts_of(tmp_path) == (set(), set())


def traced_shot_within_the_grace(
    env: dict[str, str], paused: PausedBrowser, tmp_path: Path, url: str
) -> subprocess.CompletedProcess[str]:
    """`screenshot URL --trace` with the browser paused on the way: it ends within the job's
    timeout plus JOB_GRACE, from the pause and from its start."""
    res, started = run_cli(env, tmp_path, "screenshot", url, "--trace")
    ended = time.monotonic()
    assert paused.paused_at is not None, res.stderr
    assert ended - paused.paused_at < TIMEOUT + JOB_GRACE + EXIT_SLACK, ended - paused.paused_at
    assert ended - started < TIMEOUT + JOB_GRACE + START_SLACK, ended - started
    return res


def test_paused_mid_load_ends_within_the_timeout_plus_the_grace(
    cli_env: dict[str, str], paused: PausedBrowser, web: WebServer, tmp_path: Path
) -> None:
    """The load times out at the job's deadline; the trace is saved (the server keeps it), and
    closing the context, which waits for the browser, is cut at JOB_GRACE (it took 5 s more)."""
    env = {**cli_env, **paused.server.env()}
    res = traced_shot_within_the_grace(env, paused, tmp_path, web.url("/pause-load"))
    assert_timed_out(
        res,
        env,
        tmp_path,
        f"{web.url('/pause-load')} did not load within {TIMEOUT:g}s",
        paused.server.ws_path,
    )
    assert res.stderr.rstrip().endswith("(kept: trace.zip)"), res.stderr
    assert artifacts_of(tmp_path) == ({"trace.zip"}, {"trace.zip"})  # whole, and nothing half-written


def test_paused_while_the_screenshot_is_taken_ends_within_the_timeout_plus_the_grace(
    cli_env: dict[str, str], paused: PausedBrowser, web: WebServer, tmp_path: Path
) -> None:
    """With a trace, the server answers a screenshot's timeout ~6 s late, and another screenshot
    after the failure waited as long again: the session is dropped at the deadline plus
    JOB_GRACE instead, and the trace goes with it (it was never written, so never listed)."""
    env = {**cli_env, **paused.server.env()}
    res = traced_shot_within_the_grace(env, paused, tmp_path, web.url("/pause-shot"))
    assert_timed_out(
        res,
        env,
        tmp_path,
        f"screenshot: no answer from the Playwright server at 127.0.0.1:{paused.server.port} within "
        f"{TIMEOUT:g}s (its browser wedged?)",
        paused.server.ws_path,
    )
    assert "kept:" not in res.stderr
    assert artifacts_of(tmp_path) == (set(), set())


SCRIPT = """
def run(page, context, input):
    page.goto(input["url"], timeout=input["ms"])
"""


def test_a_run_whose_browser_paused_cleans_up_within_close_timeout(
    cli_env: dict[str, str], paused: PausedBrowser, web: WebServer, tmp_path: Path
) -> None:
    """The script's load times out (exit 1: the script raised); then the trace is saved first,
    and the page's screenshot, which waits for the browser, is cut with what is left of the
    one CLOSE_TIMEOUT (each took up to 5 s, a screenshot more, one after the other)."""
    env = {**cli_env, **paused.server.env()}
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    value = json.dumps({"url": web.url("/pause-load"), "ms": TIMEOUT * 1000})
    res, _started = run_cli(env, tmp_path, "run", str(script), "--input", value)
    ended = time.monotonic()
    assert paused.paused_at is not None, res.stderr
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "load.py raised TimeoutError at line 3" in res.stderr
    assert res.stderr.rstrip().endswith("(kept: traceback.txt, trace.zip)"), res.stderr
    assert ended - paused.paused_at < TIMEOUT + CLOSE_TIMEOUT + EXIT_SLACK, ended - paused.paused_at
    names = {"traceback.txt", "trace.zip"}
    assert artifacts_of(tmp_path) == (names, names)
