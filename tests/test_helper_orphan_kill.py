"""A CLI killed outright (SIGKILL) while its command runs through the warm-connection helper: the
helper kills the command's tree on the VM, as the CLI itself does on Ctrl-C or SIGTERM. A
channel's end does not end a command that prints nothing (nor one that ignores SIGPIPE, as
Windows programs do): it ran on, on the VM, for good."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fixture_sshd import LOGIN, SshServer
from test_ssh_persist import only_helper

from win_automation.adapters import execution, persist, persist_orphan, persist_wire
from win_automation.operations import ssh as remote


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-u", LOGIN, "-f", pattern], capture_output=True).returncode == 0


def _killed_mid_command(
    cli, cli_env: dict[str, str], env: dict[str, str], cwd: Path, command: str, tag: str
) -> None:  # type: ignore[no-untyped-def]
    """Run `ssh run --shell cmd -- command` through the VM's helper, SIGKILL the CLI once the
    command (found by `tag`) runs, and check that the command is gone soon after."""
    assert cli("ssh", "run", "--shell", "cmd", "--", "echo warm", env=env).code == 0
    helper = only_helper(cli, env)  # the next call runs through it
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", command],
        env={**cli_env, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30  # a CLI start on a loaded machine takes seconds
        while not _running(tag):
            assert proc.poll() is None and time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(timeout=15)
    killed = time.monotonic()
    while _running(tag) and time.monotonic() - killed < 10:
        time.sleep(0.1)
    assert not _running(tag), "the remote command ran on after its CLI was killed"
    assert only_helper(cli, env)["pid"] == helper["pid"]  # the helper served on
    again = cli("ssh", "run", "--shell", "cmd", "--", "echo again", env=env)
    assert again.code == 0 and again.stdout.endswith("again\n"), again.stderr


@pytest.mark.parametrize("remote_os", ["posix", "windows"])
def test_a_cli_killed_mid_command_gets_its_silent_remote_command_killed_by_the_helper(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, remote_os: str
) -> None:  # type: ignore[no-untyped-def]
    """posix: by the PID the command printed first (the helper reads it from the relayed
    stderr); windows: by the needle in its command line (the stand-in's taskkill /T /F)."""
    sleep = f"sleep 20.{uuid.uuid4().int % 10**6:06d}"  # its own: pgrep finds only this test's
    env = live_sshd.env(known_hosts, remote_os=remote_os)
    _killed_mid_command(cli, cli_env, env, tmp_path, sleep, sleep)


@pytest.mark.parametrize("remote_os", ["posix", "windows"])
def test_a_cli_killed_while_its_command_prints_gets_it_killed_by_the_helper(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, remote_os: str
) -> None:  # type: ignore[no-untyped-def]
    """Output for a caller that is gone cannot be relayed: that cancels the command (and the
    helper kills it), not fail the request (which killed nothing)."""
    tag = f"tick-{uuid.uuid4().hex[:12]}"
    command = f"trap '' PIPE; for i in $(seq 3000); do echo {tag}; sleep 0.01; done"  # ends, if left
    env = live_sshd.env(known_hosts, remote_os=remote_os)
    _killed_mid_command(cli, cli_env, env, tmp_path, command, tag)


def _leave_mid_command(
    conn: persist.WarmConnection, sleep: str, *, until: bytes, cancel: bool, first: str = ""
) -> None:
    """Send the helper an `exec` of `sleep` as operations.ssh does on a posix VM (its PID printed
    first, on stderr; after `first`), read frames up to the kind `until`, send `C` when `cancel`,
    and leave."""
    request = {
        "op": "exec",
        "command": f"{first}printf '\\036wa-pid:%s\\n' \"$$\" >&2; {sleep}",
        "kill": remote.POSIX_KILL,
        "timeout": 60,
        "cancellable": True,
    }
    with socket.socket(socket.AF_UNIX) as client, persist_wire.sun_path(conn.sock) as where:
        client.connect(where)
        persist_wire.send_frame(client, b"R", json.dumps(request).encode())
        kinds = []
        while until not in kinds:
            frame = persist_wire.recv_frame(client)
            assert frame is not None, kinds
            kinds.append(frame[0])
        if cancel:
            persist_wire.send_frame(client, b"C")
    left = time.monotonic()
    while _running(sleep) and time.monotonic() - left < 10:
        time.sleep(0.1)


def test_a_caller_that_cancels_and_then_dies_gets_its_command_killed_by_the_helper(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A `C` frame then the end of the stream, before the answer: the caller is gone (the `C`
    it left unread made it look as if it still waited to kill the command itself)."""
    conn = persist.WarmConnection(live_sshd.config(known_hosts), tmp_path / "data", 30)
    assert conn.exec("true", timeout=30).exit_status == 0  # the helper is up
    sleep = f"sleep 20.{uuid.uuid4().int % 10**6:06d}"
    _leave_mid_command(conn, sleep, until=b"E", cancel=True)  # E: the PID marker was relayed
    assert not _running(sleep), "the command of a caller that cancelled and died ran on"


def test_a_caller_gone_before_the_pid_came_still_gets_its_command_killed(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """Gone once the command printed, before its PID came: the helper's cancel waits for the PID
    marker (at most PID_WAIT), else it had no PID to kill the command by. The marker comes late
    here (sshd may send it after other output) and SIGPIPE is ignored, as Windows programs do:
    the closed channel does not end the command."""
    conn = persist.WarmConnection(live_sshd.config(known_hosts), tmp_path / "data", 30)
    assert conn.exec("true", timeout=30).exit_status == 0
    sleep = f"sleep 20.{uuid.uuid4().int % 10**6:06d}"
    first = "trap '' PIPE; echo started; sleep 0.2; "
    _leave_mid_command(conn, sleep, until=b"O", cancel=False, first=first)
    assert not _running(sleep), "the command of a caller that left at its start ran on"


def test_the_pid_marker_is_read_from_the_relayed_stderr_in_any_pieces() -> None:
    request = {"op": "exec", "kill": "pkill -KILL -s {pid}"}
    split = persist_orphan.Orphan(request)
    for piece in (b"\x1e", b"wa-p", b"id:12", b"34\nan error\n"):
        split.stderr(piece)
    assert not split.waiting and split.line(None) == "pkill -KILL -s 1234"
    none = persist_orphan.Orphan(request)
    none.stderr(b"\x1ewa-oops\n")  # not the marker: no PID, nothing to kill by
    assert not none.waiting and none.line(None) is None
    windows = persist_orphan.Orphan({"op": "exec", "kill": "powershell.exe -EncodedCommand QQB"})
    assert not windows.waiting and windows.line(None) == "powershell.exe -EncodedCommand QQB"
    session = persist_orphan.Orphan({"op": "session", "kill": "taskkill.exe /T /F /PID {pid}"})
    assert session.line(77) == "taskkill.exe /T /F /PID 77"
    assert persist_orphan.Orphan({"op": "list", "kill": "x"}).line(None) is None


def test_a_cancel_waits_for_the_pid_marker_at_most_pid_wait() -> None:
    orphan = persist_orphan.Orphan({"op": "exec", "kill": "pkill -KILL -s {pid}"})
    held = orphan.held(lambda: True)
    started = time.monotonic()
    assert not held()  # no PID yet: the command could not be killed
    orphan.stderr(b"\x1ewa-pid:")
    assert not held()
    orphan.stderr(b"99\n")
    assert held() and time.monotonic() - started < execution.PID_WAIT
    late = persist_orphan.Orphan({"op": "exec", "kill": "pkill -KILL -s {pid}"})
    held = late.held(lambda: True)
    assert not held()
    time.sleep(execution.PID_WAIT + 0.1)
    assert held()  # it never came: stop anyway
    assert not persist_orphan.Orphan({"op": "exec", "kill": "pkill -KILL -s {pid}"}).held(lambda: False)()
