"""The warm PowerShell session (ssh.warm_powershell) through the real sshd and the stand-in's
session server: the same results as a powershell.exe per command, a fresh scope per command, one
session for many commands, and its faults (a timeout, a cancel, the session killed while a
command runs or while idle, paused, the connection dropped, huge output), in-process (the
worker's path) and through the warm helper (CLI calls: jobs, journal and artifacts)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixture_sshd import SshServer

from win_automation.adapters import ssh
from win_automation.adapters.warm_powershell import _Framed
from win_automation.config import Config
from win_automation.errors import ConnectError
from win_automation.operations import ssh as remote
from win_automation.operations import vm as vm_module
from win_automation.operations.vm import Vm


@pytest.fixture
def conn(ssh_config) -> Iterator[ssh.SshConnection]:  # type: ignore[no-untyped-def]
    ssh.close_all()
    yield ssh.get_connection(ssh_config)
    ssh.close_all()


def reports(server: SshServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.reports.read_text(encoding="utf-8").splitlines() if line]


def starts(server: SshServer, since: int) -> list[int]:
    """The PIDs of the sessions started since report number `since`."""
    return [r["pid"] for r in reports(server)[since:] if r["mode"] == "session-start"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def shape(result: Any) -> tuple[int, str, str]:
    return (result.exit_code, result.stdout, result.stderr)


# ---- framing -------------------------------------------------------------------------------------


def test_the_end_marker_is_found_whatever_the_chunks() -> None:
    marker = b"\x1ewa-end:0123abcd:"
    payload = b"out \x1e not a marker \x1ewa-end:0123abc\n" + b"x" * 50
    stream = payload + marker + b"-1073741819\r\n"
    for size in (1, 2, 3, 7, len(stream)):
        seen: list[bytes] = []
        framed = _Framed(marker, seen.append)
        for i in range(0, len(stream), size):
            framed.feed(stream[i : i + size])
        assert b"".join(seen) == payload and framed.value == b"-1073741819", size
    half = _Framed(marker, seen.append)
    half.feed(b"abc" + marker[:5])
    assert not half.done and half.held == marker[:5]


# ---- in-process (the worker's path) --------------------------------------------------------------

SCRIPTS = {
    "output": "Write-Output 'hello'",
    "exit code": "Write-Output 'before'\nexit 7\nWrite-Output 'never'",
    "clixml error": "Write-Error 'disk C: is full'",
    "unicode": "Write-Output 'naïve café ✓ 日本語 🎉'\n$a = 'quotes \" & | % ^ < >'",
    "long (uploaded per command)": "# long\n"
    + "\n".join(f"Write-Output 'line {i} ü'" for i in range(900))
    + "\nexit 3",
}


@pytest.mark.parametrize("remote_os", ["posix", "windows"])
def test_results_equal_the_per_command_path(conn, live_sshd: SshServer, remote_os: str) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    for name, body in SCRIPTS.items():
        cold = remote.run_powershell(conn, body, remote_os=remote_os, args=("a b", "it's"))  # type: ignore[arg-type]
        warm = remote.run_powershell(conn, body, remote_os=remote_os, args=("a b", "it's"), warm=True)  # type: ignore[arg-type]
        assert shape(warm) == shape(cold), name
        assert "CLIXML" not in warm.stderr
    failed = remote.run_powershell(conn, SCRIPTS["clixml error"], remote_os=remote_os, warm=True)  # type: ignore[arg-type]
    assert shape(failed) == (1, "Write-Error 'disk C: is full'", "disk C: is full\n")
    arrived = [r for r in reports(live_sshd)[since:] if r["mode"] == "session"]
    assert [r["body"] for r in arrived] == [*SCRIPTS.values(), SCRIPTS["clixml error"]]
    assert all("} 'a b' 'it''s'" in r["script"] for r in arrived[:-1])  # the same wrapped script
    assert len(starts(live_sshd, since)) == 1  # one session served them all


def test_cmd_mode_through_the_session_equals_the_per_command_path(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    line = 'echo "quoted & piped" | tr a-z A-Z; echo err >&2; exit 5'
    cold = remote.run_command(conn, line, shell="cmd", remote_os="windows")
    warm = remote.run_command(conn, line, shell="cmd", remote_os="windows", warm=True)
    assert shape(warm) == shape(cold) and warm.shell == "cmd" and warm.exit_code == 5
    assert warm.stdout.endswith("QUOTED & PIPED\n") and warm.stderr == "err\n"
    # a program that reads stdin gets end of input at once, not the session's request pipe
    read = remote.run_command(conn, "cat; echo read-done", shell="cmd", remote_os="windows", warm=True)
    assert read.exit_code == 0 and read.stdout.endswith("read-done\n")
    assert remote.run_command(conn, "echo next", shell="cmd", remote_os="windows", warm=True).stdout.endswith(
        "next\n"
    )


def test_each_command_runs_in_a_fresh_scope(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    first = remote.run_powershell(
        conn,
        "$x = 'kept'\n$global:g = 'global'\n$env:WA_LEAK = 'env'\nWrite-Output $x",
        remote_os="posix",
        warm=True,
    )
    assert first.stdout.endswith("Write-Output $xkept\n")  # set and read within one command
    later = remote.run_powershell(
        conn, "Write-Output $x\nWrite-Output $g\nWrite-Output $env:WA_LEAK", remote_os="posix", warm=True
    )
    assert later.stdout.endswith("Write-Output $env:WA_LEAK\n\n\n")  # three empty lines: nothing leaked
    assert len(set(starts(live_sshd, since))) == 1  # and yet the same session ran both


def test_a_timeout_kills_the_session_and_the_next_command_gets_a_new_one(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    for remote_os in ("posix", "windows"):
        since = len(reports(live_sshd))
        assert remote.run_powershell(conn, "Write-Output 'warm-up'", remote_os=remote_os, warm=True).ok  # type: ignore[arg-type]
        started = time.monotonic()
        result = (
            remote.run_command(
                conn, "sleep 30.25; echo never", shell="cmd", remote_os="windows", timeout=1.0, warm=True
            )
            if remote_os == "windows"
            else remote.run_powershell(conn, "Start-Sleep 30", remote_os="posix", timeout=1.0, warm=True)
        )
        assert result.timed_out and result.exit_code == 124 and time.monotonic() - started < 10
        (first,) = starts(live_sshd, since)
        assert gone(first), "the timed-out session is still running"
        if remote_os == "windows":  # the kill went by the session's PID, its tree with it
            kill = [r for r in reports(live_sshd)[since:] if r["mode"] == "kill"][-1]
            assert kill["pid"] == first and first in kill["killed"] and len(kill["killed"]) >= 2
        again = remote.run_powershell(conn, "Write-Output 'again'", remote_os=remote_os, warm=True)  # type: ignore[arg-type]
        assert shape(again) == (0, "Write-Output 'again'", "")
        (_, second) = starts(live_sshd, since)
        assert second != first and alive(second)


def test_a_session_killed_mid_command_fails_it_with_exit_3_and_is_replaced(
    conn, live_sshd: SshServer
) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    assert remote.run_powershell(conn, "Write-Output 'warm-up'", remote_os="posix", warm=True).ok
    (first,) = starts(live_sshd, since)
    threading.Timer(0.5, os.kill, (first, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(
        ConnectError, match=r"warm PowerShell session .* ended while the command ran"
    ) as caught:
        remote.run_powershell(conn, "Start-Sleep 20", remote_os="posix", timeout=60, warm=True)
    assert caught.value.exit_code == 3 and time.monotonic() - started < 10
    again = remote.run_powershell(conn, "Write-Output 'again'", remote_os="posix", warm=True)
    assert again.ok and len(starts(live_sshd, since)) == 2


def test_a_dead_idle_session_or_a_dropped_connection_is_replaced_before_the_command(
    conn, live_sshd: SshServer
) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    assert remote.run_powershell(conn, "Write-Output 'one'", remote_os="posix", warm=True).ok
    (first,) = starts(live_sshd, since)
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    time.sleep(0.3)  # the channel's close reaches the client
    assert remote.run_powershell(conn, "Write-Output 'two'", remote_os="posix", warm=True).ok
    live_sshd.drop_sessions()  # as a VM reboot: the connection and its sessions are gone
    time.sleep(0.3)
    assert remote.run_powershell(conn, "Write-Output 'three'", remote_os="posix", warm=True).ok
    assert len(starts(live_sshd, since)) == 3


def test_a_paused_session_hits_the_timeout_and_is_replaced(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    assert remote.run_powershell(conn, "Write-Output 'one'", remote_os="posix", warm=True).ok
    (first,) = starts(live_sshd, since)
    os.kill(first, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = remote.run_powershell(
            conn, "Write-Output 'stuck'", remote_os="posix", timeout=1.0, warm=True
        )
        assert result.timed_out and result.exit_code == 124 and time.monotonic() - started < 10
        assert gone(first)  # SIGKILL ends a stopped process too
    finally:
        if alive(first):
            os.kill(first, signal.SIGKILL)
    assert remote.run_powershell(conn, "Write-Output 'two'", remote_os="posix", warm=True).ok
    assert len(starts(live_sshd, since)) == 2


@pytest.mark.parametrize("remote_os", ["posix", "windows"])
def test_an_idle_session_that_does_not_answer_is_killed_and_the_command_runs_once_in_a_new_one(
    ssh_config, live_sshd: SshServer, remote_os: str
) -> None:  # type: ignore[no-untyped-def]
    ssh.close_all()
    conn = ssh.get_connection(ssh_config.model_copy(update={"connect_timeout": 1.0}))
    since = len(reports(live_sshd))
    assert remote.run_powershell(conn, "Write-Output 'one'", remote_os=remote_os, warm=True).ok  # type: ignore[arg-type]
    (first,) = starts(live_sshd, since)
    os.kill(first, signal.SIGSTOP)  # paused while idle: its channel stays open
    try:
        started = time.monotonic()
        result = remote.run_powershell(conn, "Write-Output 'two'", remote_os=remote_os, timeout=60, warm=True)  # type: ignore[arg-type]
        waited = time.monotonic() - started
        assert shape(result) == (0, "Write-Output 'two'", "") and waited < 10, waited
        assert gone(first), "the session that did not answer is still there"
    finally:
        if alive(first):
            os.kill(first, signal.SIGKILL)
        ssh.close_all()
    (_, second) = starts(live_sshd, since)
    ran = [r for r in reports(live_sshd)[since:] if r["mode"] == "session" and "'two'" in r.get("body", "")]
    assert [r["pid"] for r in ran] == [second], ran  # once, in the new session only
    if remote_os == "windows":  # killed by its PID, through taskkill
        kill = [r for r in reports(live_sshd)[since:] if r["mode"] == "kill"][-1]
        assert kill["pid"] == first and first in kill["killed"]


def test_cancel_kills_the_session(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    flag = threading.Event()
    threading.Timer(0.5, flag.set).start()
    started = time.monotonic()
    result = remote.run_powershell(
        conn, "Start-Sleep 20", remote_os="posix", cancelled=flag.is_set, warm=True
    )
    assert result.cancelled and result.exit_code == 130 and time.monotonic() - started < 5
    (first,) = starts(live_sshd, since)
    assert gone(first)


def test_a_cancel_while_an_idle_session_is_pinged_ends_the_command_at_once_and_sends_nothing(
    conn, live_sshd: SshServer
) -> None:  # type: ignore[no-untyped-def]
    """`jobs cancel` while a paused idle session is pinged (up to ssh.connect_timeout, 10 s here)
    is seen within the cancel poll, as in a command that runs: the script goes to no session."""
    since = len(reports(live_sshd))
    assert remote.run_powershell(conn, "Write-Output 'one'", remote_os="posix", warm=True).ok
    (first,) = starts(live_sshd, since)
    os.kill(first, signal.SIGSTOP)
    flag = threading.Event()
    threading.Timer(0.5, flag.set).start()
    try:
        started = time.monotonic()
        result = remote.run_powershell(
            conn, "Write-Output 'two'", remote_os="posix", cancelled=flag.is_set, warm=True
        )
        waited = time.monotonic() - started
        assert result.cancelled and result.exit_code == 130 and waited < 5, waited
        assert gone(first)
    finally:
        if alive(first):
            os.kill(first, signal.SIGKILL)
    ran = [r for r in reports(live_sshd)[since:] if r["mode"] == "session" and "'two'" in r.get("body", "")]
    assert ran == []


def test_huge_output_streams_through_the_session_and_nothing_leaks_into_the_next(conn) -> None:  # type: ignore[no-untyped-def]
    size = 40 * 1024 * 1024
    out, err = io.BytesIO(), io.BytesIO()
    line = f"head -c {size} /dev/zero | tr '\\0' x; head -c 100000 /dev/zero | tr '\\0' e >&2"
    result = remote.run_command(
        conn, line, shell="cmd", remote_os="windows", timeout=120, warm=True, files=(out, err)
    )
    assert result.exit_code == 0 and result.stdout_truncated
    prefix = f"& cmd.exe /d /s /c {remote.powershell.quote_literal(line)}".encode()
    assert out.getvalue() == prefix + b"x" * size and err.getvalue() == b"e" * 100000
    assert b"\x1e" not in out.getvalue()
    after = remote.run_powershell(conn, "Write-Output 'after'", remote_os="windows", warm=True)
    assert shape(after) == (0, "Write-Output 'after'", "")


@pytest.mark.parametrize("stop", ["deadline", "cancel"])
def test_a_command_that_floods_its_output_still_stops_at_its_deadline_or_cancel(
    conn, live_sshd: SshServer, stop: str
) -> None:  # type: ignore[no-untyped-def]
    since = len(reports(live_sshd))
    flag = threading.Event()
    threading.Timer(1.0, flag.set).start()
    started = time.monotonic()
    result = remote.run_command(
        conn,
        "yes flood",
        shell="cmd",
        remote_os="windows",
        timeout=1.0 if stop == "deadline" else None,
        cancelled=flag.is_set if stop == "cancel" else None,
        warm=True,
        files=(io.BytesIO(), io.BytesIO()),
        on_stdout=lambda _text: time.sleep(0.002),  # slower than `yes`: never caught up
    )
    assert time.monotonic() - started < 5
    assert result.exit_code == (124 if stop == "deadline" else 130) and result.stdout_truncated
    (first,) = starts(live_sshd, since)
    assert gone(first), "the flooding session still runs"


def test_a_session_that_floods_before_its_ready_line_stops_at_the_deadline(conn) -> None:  # type: ignore[no-untyped-def]
    spec = remote.session_spec("posix")
    flooding = dataclasses.replace(spec, launch="yes flood")
    started = time.monotonic()
    outcome = conn.run_in_session(flooding, "Write-Output 'x'", timeout=1.0)
    assert outcome.timed_out and outcome.exit_status is None
    assert time.monotonic() - started < 5


def test_concurrent_commands_get_sessions_of_their_own(conn, live_sshd: SshServer) -> None:  # type: ignore[no-untyped-def]
    results: list[Any] = [None] * 4

    def one(i: int) -> None:
        results[i] = remote.run_powershell(
            conn, f"Write-Output 'n{i}'\nStart-Sleep 0.5", remote_os="posix", warm=True
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.stdout for r in results] == [f"Write-Output 'n{i}'\nStart-Sleep 0.5" for i in range(4)]


# ---- the Vm decides: long-lived executors only ---------------------------------------------------


def test_the_vm_uses_the_session_in_a_long_lived_process_only(live_sshd: SshServer, ssh_config) -> None:  # type: ignore[no-untyped-def]
    ssh.close_all()
    try:
        warm = Config(ssh=ssh_config.model_copy(update={"warm_powershell": True, "persist": 0}))
        Vm(warm).powershell("Write-Output 'worker'", live=False)  # a worker: its own connection
        assert reports(live_sshd)[-1]["mode"] == "session"
        vm_module.share_connections(True)  # a CLI call that connects itself runs one command
        try:
            Vm(warm).powershell("Write-Output 'cli'", live=False)
            assert reports(live_sshd)[-1]["mode"] == "encoded"
        finally:
            vm_module.share_connections(False)
        Vm(Config(ssh=ssh_config)).powershell("Write-Output 'off'", live=False)
        assert reports(live_sshd)[-1]["mode"] == "encoded"
    finally:
        ssh.close_all()


# ---- through the warm helper (CLI calls) ---------------------------------------------------------


def _job_files(tmp_path: Path, job_id: str) -> tuple[str, str, str, dict[str, Any]]:
    folder = tmp_path / "artifacts" / job_id
    result = json.loads((folder / "result.json").read_text())
    return (
        (folder / "stdout.txt").read_text(),
        (folder / "stderr.txt").read_text(),
        (folder / "exit_code.txt").read_text(),
        {k: v for k, v in result.items() if k not in ("duration_ms", "job_id")},
    )


def test_cli_calls_run_in_the_helpers_session_with_the_same_jobs_and_artifacts(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from test_ssh_persist import jobs, only_helper

    env = live_sshd.env(known_hosts, remote_os="windows", warm_powershell=True)
    line = "echo out; echo err >&2; exit 3"
    since = len(reports(live_sshd))
    cold = cli("ssh", "run", "--shell", "cmd", "--json", "--", line, env=env)  # connects itself
    assert cold.code == 3, cold.stderr
    only_helper(cli, env)
    warm = [cli("ssh", "run", "--shell", "cmd", "--json", "--", line, env=env) for _ in range(3)]
    modes = [r["mode"] for r in reports(live_sshd)[since:] if r["mode"] in ("encoded", "session")]
    assert modes == ["encoded", "session", "session", "session"]
    assert len(starts(live_sshd, since)) == 1  # the helper's one session served the three
    per_command = cli(
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--json",
        "--",
        line,
        env={**env, "WIN_AUTOMATION_SSH_WARM_POWERSHELL": "false"},
    )
    shapes = set()
    for res in (cold, *warm, per_command):
        data = json.loads(res.stdout)
        shapes.add(
            (res.code, data["stdout"], data["stderr"], json.dumps(_job_files(tmp_path, data["job_id"])))
        )
    assert len(shapes) == 1, shapes
    assert {(j["state"], j["exit_code"]) for j in jobs(cli, env)} == {("failed", 3)}
    # a timeout through the helper kills the session; the next call gets a new one
    slow = cli("ssh", "run", "--shell", "cmd", "--timeout", "1s", "--", "echo go; sleep 30.5", env=env)
    assert slow.code == 124 and slow.stdout.endswith("go\n")
    (first,) = starts(live_sshd, since)
    assert gone(first)
    again = cli("ssh", "run", "--shell", "cmd", "--", "echo again", env=env)
    assert again.code == 0 and again.stdout.endswith("again\n")
    assert len(starts(live_sshd, since)) == 2
    assert [j["state"] for j in jobs(cli, env)].count("running") == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_caller_that_goes_away_mid_command_gets_the_helpers_session_killed(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, signum: int
) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C, SIGTERM or a kill of an `ssh run` whose script runs in the helper's warm session:
    the script ran on in that session (only the helper knows its PID), holding it busy."""
    env = live_sshd.env(known_hosts, warm_powershell=True)
    _helper, since, session = _idle_session(cli, live_sshd, env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--", "Start-Sleep 20"],
        env={**cli_env, **env},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not any("Start-Sleep 20" in str(r.get("body")) for r in reports(live_sshd)[since:]):
        assert time.monotonic() < deadline, "the script never reached the session"
        time.sleep(0.02)
    proc.send_signal(signum)
    proc.wait(timeout=15)
    deadline = time.monotonic() + 5
    while not gone(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(session), "the session still runs the script of a caller that left"


def _idle_session(cli, live_sshd: SshServer, env: dict[str, str]) -> tuple[dict[str, Any], int, int]:  # type: ignore[no-untyped-def]
    """A helper with one warm session, idle after its second call: (the helper's status, the
    stand-in's report count before that call, the session's pid)."""
    from test_ssh_persist import only_helper

    assert cli("ssh", "run", "--", "Write-Output 'cold'", env=env).code == 0
    helper = only_helper(cli, env)
    since = len(reports(live_sshd))
    assert cli("ssh", "run", "--", "Write-Output 'warm'", env=env).code == 0
    (session,) = starts(live_sshd, since)
    return helper, since, session


def test_a_session_killed_under_the_helper_fails_the_job_with_3(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    from test_ssh_persist import jobs, only_helper

    env = live_sshd.env(known_hosts, warm_powershell=True)
    helper, since, session = _idle_session(cli, live_sshd, env)

    def kill_while_it_runs() -> None:  # not on a timer: a CLI start on a loaded machine takes seconds
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any("Start-Sleep 20" in str(r.get("body")) for r in reports(live_sshd)[since:]):
                os.kill(session, signal.SIGKILL)
                return
            time.sleep(0.02)

    threading.Thread(target=kill_while_it_runs, daemon=True).start()
    res = cli("ssh", "run", "--", "Start-Sleep 20", env=env, timeout=30)
    assert res.code == 3 and "ended while the command ran" in res.stderr and "Traceback" not in res.stderr
    again = cli("ssh", "run", "--", "Write-Output 'again'", env=env)
    assert again.code == 0 and again.stdout.startswith("Write-Output 'again'")
    assert only_helper(cli, env)["pid"] == helper["pid"]  # the helper stayed; the session was replaced
    assert len(starts(live_sshd, since)) == 2
    states = [j["state"] for j in jobs(cli, env)]
    assert states.count("running") == 0 and states.count("failed") == 1


def test_a_session_paused_under_the_helper_is_replaced_and_the_job_succeeds(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    from test_ssh_persist import jobs, only_helper

    env = {**live_sshd.env(known_hosts, warm_powershell=True), "WIN_AUTOMATION_SSH_CONNECT_TIMEOUT": "1"}
    helper, since, session = _idle_session(cli, live_sshd, env)
    os.kill(session, signal.SIGSTOP)  # paused while idle, under the helper
    try:
        started = time.monotonic()
        res = cli("ssh", "run", "--", "Write-Output 'after'", env=env, timeout=60)
        assert res.code == 0 and res.stdout.startswith("Write-Output 'after'"), res.stderr
        assert time.monotonic() - started < 20
        assert gone(session), "the paused session is still there"
    finally:
        if alive(session):
            os.kill(session, signal.SIGKILL)
    assert only_helper(cli, env)["pid"] == helper["pid"]  # the helper stayed; the session was replaced
    assert len(starts(live_sshd, since)) == 2
    assert [j["state"] for j in jobs(cli, env)].count("succeeded") == 3


def test_a_helper_that_dies_while_it_pings_an_idle_session_is_replaced_and_the_job_succeeds(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """Nothing reaches the VM until the idle session answers its ping: a helper that dies during
    the ping (here, while a paused session keeps it waiting) has run nothing, so the call goes to a
    fresh helper (the helper says it started only once the script goes out), not exit 3."""
    from test_ssh_persist import jobs, only_helper

    env = {**live_sshd.env(known_hosts, warm_powershell=True), "WIN_AUTOMATION_SSH_CONNECT_TIMEOUT": "10"}
    helper, _, session = _idle_session(cli, live_sshd, env)
    os.kill(session, signal.SIGSTOP)  # its ping waits (up to ssh.connect_timeout, 10 s)
    pinged = len(reports(live_sshd))

    def kill_the_helper_during_the_ping() -> None:
        tasks = Path(f"/proc/{helper['pid']}/task")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # more threads: the call reached the helper
            if len(list(tasks.iterdir())) > 3:  # main, transport, the request's two
                time.sleep(0.5)
                os.kill(helper["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_helper_during_the_ping, daemon=True)
    killer.start()
    try:
        res = cli("ssh", "run", "--", "Write-Output 'after'", env=env, timeout=60)
        killer.join()
        assert res.code == 0 and res.stdout.startswith("Write-Output 'after'"), res.stderr
        assert not alive(helper["pid"]) and only_helper(cli, env)["pid"] != helper["pid"]
        ran = [r for r in reports(live_sshd)[pinged:] if "'after'" in str(r.get("body"))]
        assert len(ran) == 1  # once, in a new session of the new helper
    finally:
        if alive(session):
            os.kill(session, signal.SIGKILL)
    assert [j["state"] for j in jobs(cli, env)].count("succeeded") == 3


def test_a_session_that_cannot_start_is_exit_3_with_its_error(conn) -> None:  # type: ignore[no-untyped-def]

    spec = remote.session_spec("posix")
    broken = dataclasses.replace(spec, bootstrap="Write-Output 'not the server'")
    with pytest.raises(
        ConnectError, match=r"did not start .*the first line is not the warm session server"
    ) as caught:
        conn.run_in_session(broken, "Write-Output 'x'", timeout=10)
    assert caught.value.exit_code == 3 and "ssh.warm_powershell false" in str(caught.value)
    assert remote.run_powershell(conn, "Write-Output 'fine'", remote_os="posix", warm=True).ok


@pytest.mark.slow
def test_the_worker_runs_powershell_in_its_warm_session(
    hatchet_world, live_sshd: SshServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    known = live_sshd.write_known_hosts(tmp_path / "known_hosts")
    worker = hatchet_world.start_worker(
        "--slots", "2", name="warm-ps", env=live_sshd.env(known, warm_powershell=True)
    )
    try:
        since = len(reports(live_sshd))
        for i in range(3):
            res = hatchet_world.cli(
                "ssh", "run", "--engine", "hatchet", "--", f"$x = 'v{i}'\nWrite-Output $x\nexit {i}"
            )
            assert res.code == i, res.stderr
            assert f"v{i}" in res.stdout
        arrived = [r for r in reports(live_sshd)[since:] if r["mode"] in ("session", "encoded")]
        assert [r["mode"] for r in arrived] == ["session"] * 3
        assert len(starts(live_sshd, since)) == 1  # the worker's one session served the three
    finally:
        assert worker.stop() == 0
