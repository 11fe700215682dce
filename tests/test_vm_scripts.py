"""Opt-in tests of each scripts/windows/*.ps1 on a real Windows VM (`scripts/test.sh -m vm`, with the
VM's WIN_AUTOMATION_SSH_* settings in the environment; see tests/test_vm.py). They run the files
as the Python side sends them (`Vm.powershell(script_text(NAME), args=...)`), and keep the VM as
they found it: the set-up script is run with the VM's current firewall scope and default shell.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from win_automation.adapters import ssh
from win_automation.config import Config, load_config
from win_automation.operations.command_result import CommandResult
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import SCRIPTS_DIR, script_text

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    if not os.environ.get("WIN_AUTOMATION_SSH_HOST"):
        pytest.fail("-m vm needs the VM's settings: set WIN_AUTOMATION_SSH_HOST (and port, user, key)")
    home = tmp_path_factory.mktemp("vm-scripts")
    env = {**os.environ, "WIN_AUTOMATION_DATA_DIR": str(home)}
    config: Config = load_config(None, env).config
    yield Vm(config)
    ssh.close_all()


def ps(vm: Vm, script: str, *args: str, timeout: float = 300) -> CommandResult:
    return vm.powershell(script, args=args, timeout=timeout, live=False)


def test_get_desktop_state(vm: Vm) -> None:
    result = ps(vm, script_text("Get-DesktopState"))
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 0 and state["state"] in ("unlocked", "locked", "no-user")
    assert set(state) == {"state", "session", "user", "logonui", "explorer"}


def test_get_health_info(vm: Vm) -> None:
    result = ps(vm, script_text("Get-HealthInfo"))
    version, clock = result.stdout.strip().splitlines()[-2:]
    assert result.exit_code == 0 and version.startswith("PSVersion 5.")
    assert (
        abs((datetime.fromisoformat(clock.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()) < 600
    )


def test_start_task_starts_a_registered_task_and_refuses_a_missing_one(vm: Vm) -> None:
    missing = ps(vm, script_text("Start-WinAutomationTask"), f"wa-missing-{uuid.uuid4().hex[:8]}")
    assert missing.exit_code == 1
    name = f"wa-test-{uuid.uuid4().hex[:8]}"
    register = (
        "param($n) Register-ScheduledTask -TaskName $n -Action (New-ScheduledTaskAction -Execute cmd.exe"
        " -Argument '/c exit 0') | Out-Null"
    )
    assert ps(vm, register, name).exit_code == 0
    try:
        assert ps(vm, script_text("Start-WinAutomationTask"), name).exit_code == 0
    finally:
        ps(vm, "param($n) Unregister-ScheduledTask -TaskName $n -Confirm:$false", name)


def _current_scope(vm: Vm) -> str:
    probe = (
        "$r = Get-NetFirewallRule -Name WinAutomation-SSH -ErrorAction SilentlyContinue;"
        " if ($r) { (@(($r | Get-NetFirewallAddressFilter).RemoteAddress) -join ',') } else { 'Any' }"
    )
    return ps(vm, probe).stdout.strip() or "Any"


def test_set_firewall_rules_is_idempotent_and_makes_no_duplicate(vm: Vm) -> None:
    scope = _current_scope(vm)
    ps(vm, script_text("Set-FirewallRules"), "-RemoteAddress", scope)
    again = ps(vm, script_text("Set-FirewallRules"), "-RemoteAddress", scope)
    actions = [json.loads(line) for line in again.stdout.strip().splitlines()]
    assert again.exit_code == 0 and len(actions) == 4
    assert {a["action"] for a in actions} == {"unchanged"}
    count = ps(vm, "@(Get-NetFirewallRule -Name 'WinAutomation-*').Count").stdout.strip()
    assert count == "4"


def test_install_script_whatif_changes_nothing_and_a_second_run_changes_nothing(vm: Vm) -> None:
    folder = f"C:/ProgramData/wa-test-{uuid.uuid4().hex[:8]}"
    assert ps(vm, "param($d) New-Item -ItemType Directory -Force $d | Out-Null", folder).exit_code == 0
    try:
        for name in ("Install-WinAutomation", "Set-FirewallRules"):
            vm.put(Path(SCRIPTS_DIR / f"{name}.ps1"), f"{folder}/{name}.ps1")
        key = ps(
            vm, "(Get-Content C:/ProgramData/ssh/administrators_authorized_keys | Select-Object -First 1)"
        )
        shell = ps(vm, "(Get-ItemProperty HKLM:/SOFTWARE/OpenSSH -ErrorAction SilentlyContinue).DefaultShell")
        keep_shell = "PowerShell" if "powershell" in shell.stdout.lower() else "Cmd"
        run = (
            "param($d, $k, $r, $s, $w) & (Join-Path $d 'Install-WinAutomation.ps1') -PublicKey $k"
            " -RemoteAddress $r -DefaultShell $s -WhatIf:($w -eq '1')"
        )
        scope = _current_scope(vm)
        args = (folder, key.stdout.strip(), scope, keep_shell)
        ps(vm, run, *args, "0")  # bring the VM to the state the script makes
        whatif = ps(vm, run, *args, "1")
        assert whatif.exit_code == 0, whatif.stderr
        assert whatif.stdout.strip().splitlines()[-1].startswith("what if:")
        second = ps(vm, run, *args, "0")
        assert second.exit_code == 0, second.stderr
        lines = second.stdout.strip().splitlines()
        assert lines[-1] == "nothing changed: this VM was already set up"
        assert not [line for line in lines if line.startswith("changed")]
    finally:
        ps(vm, "param($d) Remove-Item -Recurse -Force $d", folder)
