"""Opt-in tests against a real Windows VM: what the powershell.exe stand-in can only imitate.

Run them with `scripts/test.sh -m vm` and the VM's settings in the environment, e.g.
`WIN_AUTOMATION_SSH_HOST=localhost WIN_AUTOMATION_SSH_PORT=22555 WIN_AUTOMATION_SSH_KEY_FILE=~/.ssh/vm`
(plus `WIN_AUTOMATION_SSH_KNOWN_HOSTS`, after `win-automation ssh trust`). The default run
deselects them (`-m "not vm"` in pyproject.toml): no VM can run on the development machine.
They drive the real CLI: real PowerShell and cmd, taskkill of a timed-out tree, Get-FileHash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not os.environ.get("WIN_AUTOMATION_SSH_HOST"):
        pytest.fail("-m vm needs the VM's settings: set WIN_AUTOMATION_SSH_HOST (and port, user, key)")
    home = tmp_path_factory.mktemp("vm")
    env = {
        **os.environ,
        "WIN_AUTOMATION_DATA_DIR": str(home / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(home / "artifacts"),
    }
    yield env
    wa(env, "ssh", "persist", "stop", "--all")  # the warm connection the CLI calls shared


def wa(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "win_automation", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ps(env: dict[str, str], script: str, *options: str) -> tuple[int, dict[str, object]]:
    done = wa(env, "ssh", "run", "--json", *options, "--", script)
    return done.returncode, json.loads(done.stdout)


def test_powershell_text_arrives_intact(vm_env: dict[str, str]) -> None:
    text = 'q\'uote "dq" & | % ^ < > ünï 雪'
    code, out = ps(vm_env, f"Write-Output '{text.replace(chr(39), chr(39) * 2)}'")
    assert code == 0 and str(out["stdout"]).strip() == text


def test_exit_codes_failures_and_clixml(vm_env: dict[str, str]) -> None:
    assert ps(vm_env, "exit 7")[0] == 7
    assert ps(vm_env, "cmd /c exit 3")[0] == 3
    code, out = ps(vm_env, "throw 'boom-from-vm'")
    assert code == 1 and "boom-from-vm" in str(out["stderr"]) and "CLIXML" not in str(out["stderr"])


def test_cmd_mode(vm_env: dict[str, str]) -> None:
    code, out = ps(vm_env, "echo %OS%", "--shell", "cmd")
    assert code == 0 and str(out["stdout"]).strip() == "Windows_NT"


def test_long_script_goes_over_sftp(vm_env: dict[str, str]) -> None:
    body = "\n".join(f"$x{i} = {i}" for i in range(2000)) + "\nWrite-Output ($x1999 + 1)"
    code, out = ps(vm_env, body)
    assert code == 0 and str(out["stdout"]).strip() == "2000"
    code, out = ps(vm_env, "(Get-ChildItem -Force -Filter '.wa-script-*.ps1' ~).Count")
    assert str(out["stdout"]).strip() == "0"


def test_timeout_kills_the_process_tree(vm_env: dict[str, str]) -> None:
    count = 300 + uuid.uuid4().int % 600  # a ping whose command line no other process has
    code, _ = ps(vm_env, f"ping -n {count} 127.0.0.1 | Out-Null", "--timeout", "3s")
    assert code == 124
    probe = f"@(Get-CimInstance Win32_Process | Where-Object CommandLine -like '*-n {count} *').Count"
    assert str(ps(vm_env, probe)[1]["stdout"]).strip() == "0"


def test_put_and_get_round_trip(vm_env: dict[str, str], tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    remote = f"wa-vm-test-{uuid.uuid4().hex[:8]}.bin"
    try:
        assert wa(vm_env, "ssh", "put", str(local), remote).returncode == 0
        back = tmp_path / "back.bin"
        assert wa(vm_env, "ssh", "get", remote, str(back)).returncode == 0
        assert back.read_bytes() == local.read_bytes()
    finally:
        ps(vm_env, f"Remove-Item -Force -ErrorAction SilentlyContinue ~\\{remote}")


def test_cli_calls_share_one_warm_connection(vm_env: dict[str, str]) -> None:
    """ssh.persist: later calls go through the first call's helper; prints the per-call latency."""
    env = {**vm_env, "WIN_AUTOMATION_SSH_PERSIST": "5m"}
    assert wa(env, "ssh", "run", "--shell", "cmd", "--", "echo warm").returncode == 0
    pids = set()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        done = wa(env, "ssh", "run", "--shell", "cmd", "--", "echo hi")
        times.append(time.perf_counter() - started)
        assert done.returncode == 0 and done.stdout.strip() == "hi", done.stderr
        status = json.loads(wa(env, "ssh", "persist", "status", "--json").stdout)
        pids |= {h["pid"] for h in status["helpers"] if h["alive"]}
    assert len(pids) == 1
    times.sort()
    print(f"warm `ssh run --shell cmd -- echo hi`, whole process: median {times[2] * 1000:.0f} ms")


def test_warm_powershell_matches_a_process_per_command(vm_env: dict[str, str]) -> None:
    """ssh.warm_powershell on the real powershell.exe: each script gives what a powershell.exe of
    its own gives (exit code, stdout, the error's message), runs in a fresh scope, reads NUL as
    stdin, and a timeout replaces the session; prints the warm per-command time (target < 100 ms)."""
    from win_automation.adapters import ssh
    from win_automation.config import load_config
    from win_automation.operations.vm import Vm

    config = load_config(None, vm_env).config
    cold = Vm(config.model_copy(update={"ssh": config.ssh.model_copy(update={"warm_powershell": False})}))
    warm = Vm(config.model_copy(update={"ssh": config.ssh.model_copy(update={"warm_powershell": True})}))
    scripts = [
        "Write-Output 'hi'; Get-Item C:\\Windows | Select-Object Name, Attributes",
        "exit 7",
        "cmd /c exit 3",
        "throw 'boom-from-vm'",
        "Write-Error 'soft' -ErrorAction Continue; Write-Output 'after'",
        "cmd /c 'echo to-stderr 1>&2'; Write-Output 'still here'",
        "Write-Host 'host line'; Write-Output 'out line'",
        '[Console]::In.ReadToEnd().Length; findstr x; Write-Output "findstr $LASTEXITCODE"',
        "& cmd.exe /d /s /c 'echo %OS% & ver >nul'",
        "Write-Output ([Console]::OutputEncoding.WebName); Write-Output 'ünï 雪'",
        "\n".join(f"$x{i} = {i}" for i in range(2000)) + "\nWrite-Output ($x1999 + 1)",
    ]
    try:
        for script in scripts:
            a, b = cold.powershell(script, live=False), warm.powershell(script, live=False)
            first = [r.stderr.strip().splitlines()[:1] for r in (a, b)]
            assert (b.exit_code, b.stdout, first[1]) == (a.exit_code, a.stdout, first[0]), script
        leak = "$global:wa = 'set'; Set-Location C:\\Windows; $env:WA_LEAK = 'env'; function Get-WaLeak { 1 }"
        probe = (
            'Write-Output "[$global:wa][$((Get-Location).Path)][$env:WA_LEAK]'
            '[$(Test-Path function:Get-WaLeak)]"'
        )
        assert warm.powershell(leak, live=False).ok
        assert warm.powershell(probe, live=False).stdout == cold.powershell(probe, live=False).stdout
        slow = warm.powershell("Start-Sleep 60", timeout=3, live=False)
        assert slow.exit_code == 124
        assert (
            warm.powershell("Write-Output 'after the timeout'", live=False).stdout.strip()
            == "after the timeout"
        )
        times = []
        for _ in range(21):
            started = time.perf_counter()
            assert warm.powershell("Write-Output 'hi'", live=False).stdout.strip() == "hi"
            times.append(time.perf_counter() - started)
        cold_times = []
        for _ in range(5):
            started = time.perf_counter()
            assert cold.powershell("Write-Output 'hi'", live=False).stdout.strip() == "hi"
            cold_times.append(time.perf_counter() - started)
        print(
            f"warm PowerShell: median {sorted(times)[10] * 1000:.0f} ms per command (target < 100 ms);"
            f" a powershell.exe per command: median {sorted(cold_times)[2] * 1000:.0f} ms"
        )
    finally:
        ssh.close_all()
