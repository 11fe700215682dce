"""`operations.playwright.health` and `playwright health` against the real launch-server.js with
the wheel's Node and Debian's Chromium: ok, wrong wsPath (400), server down, a server of another
playwright-core minor (428, both versions), no wsPath set. It never raises: it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixture_playwright import PREVIOUS_MINOR, PlaywrightServer
from fixture_sshd import free_port

from win_automation.adapters.playwright import client_version
from win_automation.operations.playwright import health


def test_health_ok(pw_server: PlaywrightServer, tmp_path: Path) -> None:
    report = health(pw_server.config(tmp_path))
    assert report.ok, report
    assert report.cause is None and report.fix is None
    assert report.client_version == client_version()
    assert report.server_version == ".".join(client_version().split(".")[:2])
    assert report.connect_ms is not None and 0 < report.connect_ms < 10_000
    assert report.new_page_ms is not None and 0 < report.new_page_ms < 10_000
    assert report.endpoint == f"127.0.0.1:{pw_server.port}"


def test_health_wrong_ws_path(pw_server: PlaywrightServer, tmp_path: Path) -> None:
    report = health(pw_server.config(tmp_path, ws_path="not-the-right-path-at-all"))
    assert not report.ok
    assert report.cause is not None and "HTTP 400" in report.cause
    assert report.fix is not None and "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH" in report.fix
    assert "not-the-right-path-at-all" not in json.dumps(report.as_dict())


def test_health_server_down(pw_server: PlaywrightServer, tmp_path: Path) -> None:
    report = health(pw_server.config(tmp_path, port=free_port()))
    assert not report.ok
    assert report.cause is not None and "not reachable" in report.cause
    assert report.fix is not None and "playwright install" in report.fix
    assert pw_server.ws_path not in json.dumps(report.as_dict())


def test_health_no_ws_path(pw_server: PlaywrightServer, tmp_path: Path) -> None:
    report = health(pw_server.config(tmp_path, ws_path=None))
    assert not report.ok
    assert report.cause == "playwright.ws_path is not set"
    assert report.fix is not None and "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH" in report.fix


@pytest.fixture(scope="module")
def old_server() -> PlaywrightServer:
    server = PlaywrightServer(package=PREVIOUS_MINOR).start()
    yield server  # type: ignore[misc]
    server.close()


def test_health_version_mismatch(old_server: PlaywrightServer, tmp_path: Path) -> None:
    old = json.loads((PREVIOUS_MINOR / "package.json").read_text())["version"]
    report = health(old_server.config(tmp_path))
    assert not report.ok
    assert report.server_version == ".".join(old.split(".")[:2])
    assert report.cause is not None
    assert report.server_version in report.cause and ".".join(client_version().split(".")[:2]) in report.cause
    assert report.fix is not None and "playwright install" in report.fix
    assert old_server.ws_path not in json.dumps(report.as_dict())


def test_config_show_masks_the_ws_path(cli, pw_server: PlaywrightServer) -> None:
    for args in (("config", "show"), ("config", "show", "--json")):
        run = cli(*args, env=pw_server.env())
        assert run.code == 0, run.stderr
        assert pw_server.ws_path not in run.stdout + run.stderr
        assert "playwright.ws_path" in run.stdout or '"ws_path"' in run.stdout


def test_a_job_against_a_mismatched_server(cli, old_server: PlaywrightServer, tmp_path: Path) -> None:
    old = ".".join(json.loads((PREVIOUS_MINOR / "package.json").read_text())["version"].split(".")[:2])
    run = cli("playwright", "screenshot", "http://127.0.0.1:9/", env=old_server.env())
    assert run.code == 2
    last = run.stderr.strip().splitlines()[-1]
    client = ".".join(client_version().split(".")[:2])
    assert f"runs Playwright {old}, this client {client}: major.minor must match" in last
    assert "fix: `win-automation playwright install`" in last
    assert old_server.ws_path not in run.stdout + run.stderr
