"""Browser jobs by route and by fault: through the SSH port forward (the real sshd), headed jobs
and the VM desktop probe, the server killed mid-session, a server that cannot find Edge
(`channel: msedge`), and the `playwright_sessions_total` metric."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixture_playwright import CHROMIUM, LAUNCH_SERVER, NODE, PlaywrightServer, WebServer
from fixture_sshd import SshServer

from win_automation import metrics
from win_automation.adapters import ssh
from win_automation.config import Config
from win_automation.engines.dispatch import run_job
from win_automation.operations.playwright import health
from workflows.playwright_screenshot import playwright_screenshot


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    ssh.close_all()
    yield
    ssh.close_all()


def tunnel_config(pw_server: PlaywrightServer, ssh_config, tmp_path: Path) -> Config:  # type: ignore[no-untyped-def]
    """The Playwright port as the VM's own (here: loopback), reached through the SSH forward; the
    configured host is deliberately wrong, so only the tunnel can reach the server."""
    base = pw_server.config(tmp_path, host="192.0.2.1")
    return base.model_copy(update={"ssh": ssh_config.model_copy(update={"forward_services": True})})


def test_health_through_the_ssh_forward(pw_server: PlaywrightServer, ssh_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = health(tunnel_config(pw_server, ssh_config, tmp_path))
    assert report.ok, report
    assert report.via == "ssh" and report.endpoint.endswith("through the SSH connection")
    assert not report.endpoint.startswith(f"127.0.0.1:{pw_server.port} ")  # the local end of the forward


def test_screenshot_job_through_the_ssh_forward(
    pw_server: PlaywrightServer,
    web: WebServer,
    ssh_config,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    config = tunnel_config(pw_server, ssh_config, tmp_path)
    before = metrics.snapshot()["playwright_sessions_total"]
    outcome = run_job(config, playwright_screenshot, playwright_screenshot.parse_input({"url": web.url("/")}))
    assert outcome.exit_code == 0, outcome.error
    assert (
        outcome.artifacts_dir is not None and (outcome.artifacts_dir / "screenshot.png").stat().st_size > 1000
    )
    assert metrics.snapshot()["playwright_sessions_total"] == before + 1


def test_headed_job_refuses_a_locked_desktop(
    cli,
    pw_server: PlaywrightServer,
    web: WebServer,
    live_sshd: SshServer,
    known_hosts: Path,
    desktop: Callable[[str], None],
    tmp_path: Path,
) -> None:
    env = {**pw_server.env(), **live_sshd.env(known_hosts)}
    desktop("locked")
    run = cli("playwright", "screenshot", web.url("/"), "--headed", env=env)
    assert run.code == 1
    assert "the VM desktop is locked" in run.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "artifacts").rglob("screenshot.png"))  # no browser session started
    desktop("unlocked")
    run = cli("playwright", "screenshot", web.url("/"), "--headed", "--json", env=env)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["workflow"] == "playwright-screenshot-headed"


HANG = """
import pathlib, time
from win_automation.operations.playwright_jobs import save_artifact

def run(page, context, input):
    page.goto(input["url"])
    save_artifact("before.txt", "loaded")
    pathlib.Path(input["marker"]).write_text("ready")
    page.wait_for_timeout(20000)
    return "never"
"""


def test_server_killed_mid_session(cli_env: dict[str, str], web: WebServer, tmp_path: Path) -> None:
    server = PlaywrightServer().start()
    try:
        script, marker = tmp_path / "hang.py", tmp_path / "marker"
        script.write_text(HANG)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "win_automation",
                "playwright",
                "run",
                str(script),
                "--input",
                json.dumps({"url": web.url("/"), "marker": str(marker)}),
            ],
            env={**cli_env, **server.env()},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.05)
        server.kill()
        out, err = proc.communicate(timeout=30)
    finally:
        server.close()
    assert proc.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert "went away during the session" in last and "(kept: before.txt)" in last
    assert server.ws_path not in out + err
    assert len(list((tmp_path / "artifacts").rglob("before.txt"))) == 1


def test_no_edge_with_channel_msedge(tmp_path: Path) -> None:
    """The real launch-server.js asked for Edge where there is none: one line naming it, exit 2."""
    server = PlaywrightServer(channel="msedge")
    try:
        server.start(wait=False)
        assert server.proc is not None
        assert server.proc.wait(30) == 2
        lines = server.output().strip().splitlines()
        assert lines[-1].startswith("launch-server: cannot launch the browser (msedge): ")
        assert "msedge" in lines[-1] and server.ws_path not in server.output()
    finally:
        server.close()
    assert Path(CHROMIUM).exists() and NODE.exists() and LAUNCH_SERVER.exists()


def test_cancel_is_seen_after_the_page_loads(
    cli, cli_env: dict[str, str], pw_server: PlaywrightServer, web: WebServer, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "playwright", "screenshot", web.url("/slow")],
        env={**cli_env, **pw_server.env()},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, running = time.monotonic() + 20, []
    while not running:
        assert time.monotonic() < deadline and proc.poll() is None
        listed = cli("jobs", "list", "--json")
        running = [j for j in json.loads(listed.stdout or "[]") if j["state"] == "running"]
        time.sleep(0.1)
    assert cli("jobs", "cancel", running[0]["job_id"]).code == 0
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "cancelled" in err.strip().splitlines()[-1], err
