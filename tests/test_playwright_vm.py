"""Opt-in (`scripts/test.sh -m vm`, see tests/test_vm.py): `playwright install` on a real Windows VM
with its Edge, the scheduled task and the admin-only wsPath file; a second install is unchanged;
`health` passes; `--rotate-ws-path` makes the old wsPath fail with 400. The VM's Playwright port
must be forwarded to `playwright.host:port` (or set WIN_AUTOMATION_SSH_FORWARD_SERVICES=true)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not os.environ.get("WIN_AUTOMATION_SSH_HOST"):
        pytest.fail("-m vm needs the VM's settings: set WIN_AUTOMATION_SSH_HOST (and port, user, key)")
    home = tmp_path_factory.mktemp("vm-playwright")
    return {**os.environ, "WIN_AUTOMATION_DATA_DIR": str(home / "data")}


def wa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "win_automation", *args], env=env, capture_output=True, text=True, timeout=900
    )


def test_install_is_idempotent_and_healthy(vm_env: dict[str, str]) -> None:
    first = wa(vm_env, "playwright", "install", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["health"]["ok"] and report["task_state"] == "Running"
    env = dict(vm_env)
    if report["export"]:
        name, value = report["export"].removeprefix("export ").split("=", 1)
        env[name] = value
    assert env["WIN_AUTOMATION_PLAYWRIGHT_WS_PATH"] not in first.stderr
    again = json.loads(wa(env, "playwright", "install", "--json").stdout)
    assert again["unchanged"] is True and again["export"] is None
    assert wa(env, "playwright", "health").returncode == 0
    rotated = wa(env, "playwright", "install", "--rotate-ws-path", "--json")
    assert "ws-path" in json.loads(rotated.stdout)["changed"]
    stale = wa(env, "playwright", "health", "--json")
    assert stale.returncode == 2 and "HTTP 400" in json.loads(stale.stdout)["cause"]
