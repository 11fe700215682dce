"""Remote commands end to end: PowerShell through the `powershell.exe` stand-in, cmd mode,
deadlines that kill the remote process tree, and the idempotent skip."""

from __future__ import annotations

import errno
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fixture_sshd import LOGIN, SshServer

from win_automation.adapters import execution, ssh
from win_automation.adapters.execution import ExecOutcome
from win_automation.operations import powershell
from win_automation.operations import ssh as remote
from win_automation.operations.output_stream import OutputStream


@pytest.fixture
def conn(ssh_config):  # type: ignore[no-untyped-def]
    ssh.close_all()
    yield ssh.get_connection(ssh_config)
    ssh.close_all()


def last_report(server: SshServer) -> dict:  # type: ignore[type-arg]
    return json.loads(server.reports.read_text(encoding="utf-8").splitlines()[-1])


TRICKY = (
    'Write-Output "quotes \' and \\" & | % ^ < > `$env:X"\n'
    "$a = 'naïve café ✓ 日本語 🎉'\r\n\tline3 ^& %PATH% !x!"
)


def test_powershell_text_arrives_intact_through_encoded_command(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    result = remote.run_powershell(conn, TRICKY, remote_os="posix")
    assert result.exit_code == 0 and result.stdout == TRICKY
    report = last_report(live_sshd)
    assert report["mode"] == "encoded" and report["body"] == TRICKY
    assert report["argv"][:5] == [
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
    ]
    script = report["script"]
    assert script.startswith("# win-automation run ") and "$ErrorActionPreference='Stop'" in script
    assert "[Console]::OutputEncoding=[System.Text.UTF8Encoding]::new($false)" in script
    assert "exit $global:LASTEXITCODE" in script


def test_exit_codes_and_clixml_stderr(conn) -> None:  # type: ignore[no-untyped-def]
    assert remote.run_command(conn, "exit 7", remote_os="posix").exit_code == 7
    failed = remote.run_command(conn, "Write-Error 'disk C: is full'", remote_os="posix")
    assert failed.exit_code == 1 and failed.stderr == "disk C: is full\n" and "CLIXML" not in failed.stderr


def test_long_script_goes_over_sftp_runs_with_file_and_is_removed(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    body = "# 20 KB\n" + "\n".join(f"Write-Output 'line {i} ü & | %'" for i in range(700)) + "\nexit 3"
    assert len(body.encode()) > 20_000
    result = remote.run_powershell(conn, body, args=("a b", "it's"), remote_os="posix")
    assert result.exit_code == 3 and result.stdout == body
    report = last_report(live_sshd)
    assert report["mode"] == "file" and report["body"] == body
    assert "& {" in report["script"] and "} 'a b' 'it''s'" in report["script"]
    uploaded = Path(report["path"])
    assert uploaded.name.startswith(".wa-script-") and uploaded.suffix == ".ps1"
    assert not (live_sshd.home / uploaded).exists() and not uploaded.exists()


def test_cmd_mode_passes_the_command_as_given(conn) -> None:  # type: ignore[no-untyped-def]
    result = remote.run_command(
        conn, "printf '%s|' a 'b c' && echo \"$HOME\" >&2; exit 4", shell="cmd", remote_os="posix"
    )
    assert (result.exit_code, result.stdout, result.shell) == (4, "a|b c|", "cmd")
    assert result.stderr.strip().startswith("/")  # the PID marker was taken out of stderr


def _alive(marker: str) -> bool:
    """A process of the test login (this worker's: see fixture_sshd) whose command line matches."""
    return subprocess.run(["pgrep", "-u", LOGIN, "-f", marker], capture_output=True).returncode == 0


def test_timeout_kills_the_remote_process_tree(conn) -> None:  # type: ignore[no-untyped-def]
    marker = f"wa{uuid.uuid4().hex[:8]}"
    # a child and a grandchild that would outlive a closed channel
    command = f"sh -c 'sleep 300 # {marker}' & sh -c \"sh -c 'sleep 301 # {marker}'\" & echo started; wait"
    started = time.monotonic()
    result = remote.run_command(conn, command, shell="cmd", remote_os="posix", timeout=1.0)
    assert result.timed_out and result.exit_code == 124 and result.stdout == "started\n"
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(marker)


def test_powershell_timeout_kills_the_stand_in(conn) -> None:  # type: ignore[no-untyped-def]
    result = remote.run_powershell(conn, "Write-Output 'go'\nStart-Sleep 60", remote_os="posix", timeout=1.0)
    assert result.timed_out and result.exit_code == 124
    assert _wait_gone("Start-Sleep|powershell.exe -NoProfile")


def test_windows_kill_uses_the_needle_of_each_mode() -> None:
    script = powershell.wrap_script("Start-Sleep 9", run_id="f" * 32)
    line = powershell.encoded_command_line(script)
    assert powershell.encoded_needle(script) in line
    assert powershell.encoded_needle(script) in powershell.kill_tree_script(powershell.encoded_needle(script))


def test_idempotent_skip(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    flag = live_sshd.remote_dir / "done.flag"
    flag.unlink(missing_ok=True)
    check = f"test -e {flag}"
    checked, ran = remote.run_idempotent(
        conn, f"touch {flag}; echo made", check, shell="cmd", remote_os="posix"
    )
    assert checked.exit_code == 1 and ran is not None and ran.stdout == "made\n" and flag.exists()
    checked, ran = remote.run_idempotent(conn, f"echo again >> {flag}", check, shell="cmd", remote_os="posix")
    assert checked.exit_code == 0 and ran is None and flag.read_text() == ""


def _wait_gone(pattern: str) -> bool:
    deadline = time.monotonic() + 5
    while _alive(pattern) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pattern)


@pytest.mark.parametrize("mode", ["encoded", "file", "cmd"])
def test_windows_kill_finds_the_needle_and_kills_the_tree(conn, live_sshd: SshServer, mode: str) -> None:  # type: ignore[no-untyped-def]
    """remote_os=windows on the Linux sshd: the stand-in runs the kill script as taskkill would."""
    secs = f"3{uuid.uuid4().int % 10**6}.5"
    if mode == "cmd":
        result = remote.run_command(
            conn, f"sleep {secs}; echo never", shell="cmd", remote_os="windows", timeout=1.0
        )
        assert _wait_gone(f"sleep {secs}")
    else:
        padding = "\n".join(f"# {i:05d} padding to pass the command-line limit" for i in range(300))
        body = f"Start-Sleep {secs}" + ("\n" + padding if mode == "file" else "")
        result = remote.run_powershell(conn, body, remote_os="windows", timeout=1.0)
        assert _wait_gone("powershell.exe -NoProfile")
    assert result.timed_out and result.exit_code == 124
    kill = last_report(live_sshd)
    assert kill["mode"] == "kill" and kill["killed"], kill
    if mode == "file":
        assert kill["needle"].startswith(".wa-script-")
    elif mode == "cmd":  # cmd mode on Windows: an encoded script that hands the line to cmd.exe
        lines = live_sshd.reports.read_text(encoding="utf-8").splitlines()
        arrived = [r for r in map(json.loads, lines) if r.get("mode") == "encoded"][-1]
        assert arrived["body"] == f"& cmd.exe /d /s /c 'sleep {secs}; echo never'"
        assert kill["needle"] in " ".join(arrived["argv"])


def test_a_script_left_by_a_killed_process_is_removed_by_the_next_upload(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from win_automation.partfiles import HOST_TAG

    home = live_sshd.home
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = home / f".wa-script-{HOST_TAG}-{dead.pid}-0123abcd.ps1"
    foreign = home / ".wa-script-0123456789abcdef.ps1"  # the old untagged form: not ours to judge
    for path in (stale, foreign):
        path.write_text("Write-Output 'left behind'")
    try:
        body = "# long\n" + "\n".join(f"Write-Output 'line {i}'" for i in range(2000))
        assert remote.run_powershell(conn, body, remote_os="posix").exit_code == 0
        assert not stale.exists() and foreign.exists()
    finally:
        stale.unlink(missing_ok=True)
        foreign.unlink(missing_ok=True)


def test_windows_cmd_mode_hands_the_line_to_cmd_exe_through_an_encoded_script(
    conn, live_sshd: SshServer
) -> None:  # type: ignore[no-untyped-def]
    """Whatever the VM's default shell (cmd.exe or PowerShell), cmd mode arrives as -EncodedCommand."""
    line = 'echo "quoted & piped" | tr a-z A-Z; exit 5'
    result = remote.run_command(conn, line, shell="cmd", remote_os="windows", timeout=10)
    arrived = last_report(live_sshd)
    assert arrived["mode"] == "encoded" and "-EncodedCommand" in arrived["argv"]
    assert arrived["body"] == "& cmd.exe /d /s /c 'echo \"quoted & piped\" | tr a-z A-Z; exit 5'"
    assert (result.shell, result.command, result.exit_code) == ("cmd", line, 5)
    assert result.stdout.endswith("QUOTED & PIPED\n")  # sh, standing in for cmd, ran it


class _StdoutAheadOfThePid:
    """What a real sshd sent in a flaky run of test_cli_faults: the command's first stdout ahead of
    the PID marker that its stderr starts with (sshd, not the command, orders the two streams;
    a real sshd cannot be made to do it at will). It polls `cancelled` between the two, as a
    connection does, and records the commands it runs after (the kill)."""

    def __init__(self) -> None:
        self.polls: list[bool] = []
        self.after: list[str] = []

    def exec(self, command, *, timeout=None, on_stdout=None, on_stderr=None, cancelled=None, keep=True):  # type: ignore[no-untyped-def]
        if self.polls:
            self.after.append(command)
            return ExecOutcome(b"", b"", 0, False, 1)
        on_stdout(b"y\n" * 1000)
        self.polls.append(cancelled())  # the output could not be written: stop...
        on_stderr(b"\x1ewa-pid:4242\n")
        self.polls.append(cancelled())
        return ExecOutcome(b"", b"", None, False, 5, cancelled=True)


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_stop_before_the_pid_came_waits_for_it_and_kills_the_session() -> None:
    """Output that cannot be written stops the command at once; when its first stdout came
    ahead of its PID, the stop waited for no PID and could not kill the remote session ("no PID
    seen"): a command that prints nothing more would outlive the channel."""
    conn = _StdoutAheadOfThePid()
    with pytest.raises(OSError, match="No space left"):
        remote.run_command(conn, "yes", shell="cmd", remote_os="posix", files=(_FullDisk(), None))  # type: ignore[arg-type]
    assert conn.polls == [False, True]  # held back until the PID came
    assert conn.after == ["pkill -KILL -s 4242"]


def test_a_stop_waits_for_a_pid_at_most_pid_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execution, "PID_WAIT", 0.2)
    stop = remote._once_pid_is_known(lambda: True, OutputStream(None, pid_marker=True, clixml=False))
    started = time.monotonic()
    while not stop():
        time.sleep(0.01)
    assert 0.2 <= time.monotonic() - started < 2
