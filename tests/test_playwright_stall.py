"""A browser session whose server stops answering, or whose job is cancelled, mid-call.

Playwright keeps its action timeouts in the server: a paused server (SIGSTOP: its port still
accepts, nothing answers) would leave `page.goto` waiting for good, and the job `running`. The
session's watchdog drops it after `playwright.stall_timeout`, or at once on `jobs cancel`, by
killing this side's Playwright driver (adapters/playwright.py)."""

from __future__ import annotations

import gc
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


@pytest.fixture
def own_server() -> Iterator[PlaywrightServer]:
    """A server of this test's own: it is paused, which the shared one must never be."""
    server = PlaywrightServer().start()
    try:
        yield server
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        server.close()


def start_job(env: dict[str, str], tmp_path: Path, web: WebServer) -> subprocess.Popen[str]:
    """`playwright screenshot` of a page that never answers, once its request reached the page's
    server (the goto is under way, waiting on the browser server)."""
    hung = len(web.httpd.hung)  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "win_automation",
            "playwright",
            "screenshot",
            web.url("/never"),
            "--timeout",
            "60s",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(web.httpd.hung) == hung and time.monotonic() < deadline:  # type: ignore[attr-defined]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert len(web.httpd.hung) > hung, "the page was never requested"  # type: ignore[attr-defined]
    return proc


def drivers_of(pid: int) -> list[int]:
    """Playwright drivers (`node ... run-driver`) that are children of `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"run-driver" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_server_that_stops_answering_mid_call_fails_the_job_with_exit_3(
    cli_env: dict[str, str], own_server: PlaywrightServer, web: WebServer, tmp_path: Path
) -> None:
    env = {**cli_env, **own_server.env(), "WIN_AUTOMATION_PLAYWRIGHT_STALL_TIMEOUT": "2s"}
    proc = start_job(env, tmp_path, web)
    assert len(drivers_of(proc.pid)) == 1  # the driver the watchdog would kill
    os.killpg(own_server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    paused = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - paused
    assert proc.returncode == 3, stderr
    assert took < 2 + 2 * 2.0 + 5  # the stall bound, a probe's own wait, and slack
    assert stderr.count("\n") <= 2, stderr  # the watchdog's warning line, the error line
    last = stderr.strip().splitlines()[-1]
    assert "stopped answering" in last and "no answer for 2s" in last and own_server.ws_path not in stderr
    job = list_jobs(env, tmp_path)[0]
    assert job["state"] == "failed" and job["exit_code"] == 3 and "stopped answering" in job["error"], job


def test_jobs_cancel_ends_a_browser_job_mid_call(
    cli_env: dict[str, str], pw_server: PlaywrightServer, web: WebServer, tmp_path: Path
) -> None:
    env = {**cli_env, **pw_server.env()}
    proc = start_job(env, tmp_path, web)
    job_id = list_jobs(env, tmp_path)[0]["job_id"]
    asked = time.monotonic()
    cancel = subprocess.run(
        [sys.executable, "-m", "win_automation", "jobs", "cancel", job_id],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cancel.returncode == 0, cancel.stderr
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - asked < 10  # not the goto's 60 s
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert list_jobs(env, tmp_path)[0]["state"] == "cancelled"


def test_a_session_dropped_mid_connect_raises_at_once_and_leaves_nothing_to_log(
    endpoints: list, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that takes the connection and never answers the handshake; the caller gives up
    first: the connect raises then, and the killed driver's error is not left for asyncio to
    log as `Future exception was never retrieved` when collected."""
    from fixture_endpoints import RawListener

    from win_automation.adapters.playwright import Endpoint, open_browser
    from win_automation.errors import OperationTimeout

    silent = RawListener("silent")
    endpoints.append(silent)
    started = time.monotonic()
    with (
        pytest.raises(OperationTimeout, match="connect: no answer"),
        open_browser(
            Endpoint("127.0.0.1", silent.port, "wa-test-ws-path"),
            timeout=30,
            retry=False,
            give_up=lambda: time.monotonic() - started > 0.5,
        ),
    ):
        pass
    assert time.monotonic() - started < 5
    gc.collect()
    assert "never retrieved" not in caplog.text
