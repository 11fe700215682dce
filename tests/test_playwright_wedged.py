"""A browser server whose Node still answers while what is behind it never does.

- The browser under the real launch-server.js is paused (SIGSTOP of Chromium only): the
  watchdog's HTTP probe is still answered, and Playwright keeps no timeout for opening a context,
  so the calls without one are bounded by the job's `--timeout` (the session is then dropped).
- A WebSocket that opens (101) and then sends nothing, or never answers the upgrade: `health`
  reports it as not answering (exit 3), and the driver killed at its deadline leaves nothing for
  asyncio to log.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_endpoints import RawListener, ThreadedServer
from fixture_jobs import list_jobs
from fixture_playwright import PlaywrightServer, WebServer
from test_playwright_stall import drivers_of

from win_automation.config.schema import Config
from win_automation.operations.playwright import health


def browser_pid(server: PlaywrightServer) -> int:
    """The Chromium that launch-server.js started (its child; not the zygotes and helpers)."""
    assert server.proc is not None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == server.proc.pid and b"chromium" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
    raise AssertionError("no browser under the server")


@pytest.fixture
def wedged() -> Iterator[PlaywrightServer]:
    """A server of this test's own whose browser is paused (the shared one must never be)."""
    server = PlaywrightServer().start()
    pid = browser_pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        os.kill(pid, signal.SIGCONT)
        server.close()


def gone(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    except OSError:
        return True


def test_a_wedged_browser_ends_a_screenshot_job_at_its_timeout(
    cli_env: dict[str, str], wedged: PlaywrightServer, web: WebServer, tmp_path: Path
) -> None:
    env = {**cli_env, **wedged.env()}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "playwright", "screenshot", web.url(), "--timeout", "2s"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    drivers: list[int] = []
    while not drivers and proc.poll() is None and time.monotonic() - started < 20:
        drivers = drivers_of(proc.pid)
        time.sleep(0.05)
    started = time.monotonic()  # the CLI's start-up is behind it (2-4 s on a loaded machine)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("still running after 30 s (unbounded, it ran until the step's 3900 s)")
    took = time.monotonic() - started
    assert proc.returncode == 124, stderr
    assert took < 2 + 4, took  # the timeout, and the connect
    assert stderr.count("\n") == 1, stderr
    assert "new context: no answer from the Playwright server" in stderr
    assert "within 2s (its browser wedged?)" in stderr and wedged.ws_path not in stderr
    assert drivers and all(gone(pid) for pid in drivers)  # nothing left running here
    job = list_jobs(env, tmp_path)[0]
    assert job["state"] == "failed" and job["exit_code"] == 124, job
    assert "its browser wedged?" in job["error"]


def test_health_of_a_wedged_browser_is_exit_3_at_its_deadline(
    wedged: PlaywrightServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    report = health(wedged.config(tmp_path), timeout=1.5)
    assert time.monotonic() - started < 1.5 + 2
    assert not report.ok and report.exit_code == 3, report
    assert report.cause is not None and report.cause.startswith("new context: no answer")


class SilentWebSocket(ThreadedServer):
    """Answers a plain HTTP request (the watchdog's probe) and accepts a WebSocket upgrade
    (101), then sends nothing."""

    upgrades = 0

    def answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536) or b"\r\n\r\n"
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
            key = {k.lower(): v for k, v in headers.items()}.get("sec-websocket-key")
            if key is None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                conn.close()
                return
            self.upgrades += 1
            magic = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1((key + magic).encode()).digest()).decode()
            conn.sendall(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )


@pytest.mark.parametrize("mode", ["silent", "hang"])
def test_health_of_a_websocket_that_says_nothing_is_exit_3_and_logs_nothing(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SilentWebSocket() if mode == "silent" else RawListener("silent")
    try:
        config = Config.model_validate(
            {
                "playwright": {"host": "127.0.0.1", "port": fake.port, "ws_path": "wa-test-ws-path"},
                "data": {"dir": str(tmp_path / "data")},
            }
        )
        started = time.monotonic()
        report = health(config, timeout=1.5)
        assert time.monotonic() - started < 1.5 + 2
    finally:
        fake.close()
    gc.collect()
    assert not report.ok and report.exit_code == 3, report
    assert report.cause is not None and "no answer" in report.cause
    asyncio_lines = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert asyncio_lines == []


def test_a_screenshot_from_a_server_that_says_nothing_is_tried_once(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A WebSocket that opens and then says nothing: the connect's timeout was retried as a
    refusal is (3 attempts, 3 x --timeout, then exit 124); a server that is silent once stays so."""
    fake = SilentWebSocket()
    env = {
        **cli_env,
        "WIN_AUTOMATION_PLAYWRIGHT_HOST": "127.0.0.1",
        "WIN_AUTOMATION_PLAYWRIGHT_PORT": str(fake.port),
        "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": "wa-test-ws-path",
    }
    try:
        started = time.monotonic()
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "win_automation",
                "playwright",
                "screenshot",
                "http://127.0.0.1:9/",
                "--timeout",
                "2s",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    finally:
        fake.close()
    assert res.returncode == 3 and res.stderr.count("\n") == 1, res.stderr
    assert (
        "connect: no answer from the Playwright server" in res.stderr and "wa-test-ws-path" not in res.stderr
    )
    assert fake.upgrades == 1  # one attempt, not three
    assert took < 2 * 2 + 8, took  # its timeout and the CLI's start (2-4 s on a loaded machine)
