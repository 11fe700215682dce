"""The locked-desktop probe (operations/desktop.py, scripts/windows/Get-DesktopState.ps1), sent
over the real test sshd to its powershell.exe stand-in, which answers exactly this probe as the
desktop the test sets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixture_sshd import SshServer, free_port

from win_automation.adapters import ssh
from win_automation.config import Config
from win_automation.errors import ConnectError, DesktopUnavailable, WinAutomationError
from win_automation.operations import powershell
from win_automation.operations.desktop import desktop_state, require_desktop
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import script_text


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    ssh.close_all()
    yield
    ssh.close_all()


def _reports(server: SshServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.reports.read_text().splitlines() if line]


def test_an_unlocked_desktop_passes_and_the_probe_went_encoded(
    live_sshd: SshServer, ssh_config, desktop: Callable[[str], None]
) -> None:  # type: ignore[no-untyped-def]
    desktop("unlocked")
    vm = Vm(Config(ssh=ssh_config))
    assert require_desktop(vm) is None
    report = _reports(live_sshd)[-1]
    assert report["mode"] == "encoded" and report["desktop"] == "unlocked"
    assert report["body"] == script_text("Get-DesktopState")
    found = desktop_state(vm)
    assert (found.state, found.session, found.user, found.explorer) == ("unlocked", 1, "WIN11\\tester", True)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("locked", r"^the VM desktop is locked \(LogonUI\.exe in console session 1 of WIN11\\tester on "),
        (
            "no-user",
            r"^nobody is logged on to the VM 127\.0\.0\.1:\d+ \(no explorer\.exe in console session 1\)",
        ),
    ],
)
def test_a_locked_or_empty_desktop_refuses_with_one_line(
    ssh_config, desktop: Callable[[str], None], state: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    desktop(state)
    with pytest.raises(DesktopUnavailable, match=message) as caught:
        require_desktop(Vm(Config(ssh=ssh_config)))
    assert caught.value.exit_code == 1 and "\n" not in str(caught.value)


def test_an_answer_that_is_not_the_probes_json_is_an_error(
    ssh_config, desktop: Callable[[str], None]
) -> None:  # type: ignore[no-untyped-def]
    desktop("Add-Type : Cannot add type. Compilation errors occurred.")
    with pytest.raises(WinAutomationError, match="answered something else than its JSON line") as caught:
        require_desktop(Vm(Config(ssh=ssh_config)))
    assert not isinstance(caught.value, DesktopUnavailable)


def test_the_stand_in_answers_only_the_probe_itself(live_sshd: SshServer, ssh_config, desktop) -> None:  # type: ignore[no-untyped-def]
    desktop("locked")
    other = script_text("Get-DesktopState").replace("LogonUI.exe", "LogonUX.exe")
    result = Vm(Config(ssh=ssh_config)).powershell(other, live=False)
    assert result.stdout == other and "desktop" not in _reports(live_sshd)[-1]


def test_an_unreachable_vm_is_a_connect_error(live_sshd: SshServer, known_hosts: Path) -> None:
    cfg = live_sshd.config(known_hosts, port=free_port(), connect_timeout=1)
    with pytest.raises(ConnectError) as caught:
        require_desktop(Vm(Config(ssh=cfg)))
    assert caught.value.exit_code == 3


def test_the_probe_script_reads_the_console_session_and_prints_one_json_line() -> None:
    text = script_text("Get-DesktopState")
    assert text.lstrip("# \n").count("param()") == 1
    assert "WTSGetActiveConsoleSessionId" in text and "ConvertTo-Json -Compress" in text
    assert "'explorer.exe'" in text and "'LogonUI.exe'" in text
    assert not powershell.needs_upload(powershell.wrap_script(text, run_id="x" * 32))
