"""One process of the chain paused while the others go on.

- The live output's reader paused (`| less` not scrolled, a stopped `cat`): the job still ends at
  its deadline or on `jobs cancel`, its remote process tree is killed and the journal says so, on
  every path a command takes (in the calling process, through the warm CLI process, the warm
  helper, a warm PowerShell session). The CLI then waits for its reader, as any Unix tool.
- The CLI itself paused (Ctrl-Z) while the warm helper runs its command: the helper still ends
  the command at its deadline (it no longer waits, blocked, for the caller to read its output).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixture_sshd import SshServer

from win_automation.cli import launch
from win_automation.cli.output import STOPPED_ERROR_WAIT

PATHS = {
    "in-process": {"WIN_AUTOMATION_CLI_SERVER": "0", "WIN_AUTOMATION_SSH_PERSIST": "0"},
    "warm-cli-process": {"WIN_AUTOMATION_CLI_SERVER": "1", "WIN_AUTOMATION_SSH_PERSIST": "10m"},  # and helper
    "warm-helper": {"WIN_AUTOMATION_CLI_SERVER": "0", "WIN_AUTOMATION_SSH_PERSIST": "10m"},
    "warm-powershell": {
        "WIN_AUTOMATION_CLI_SERVER": "0",
        "WIN_AUTOMATION_SSH_PERSIST": "10m",
        "WIN_AUTOMATION_SSH_WARM_POWERSHELL": "true",
    },
}


def _wa(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "win_automation", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def _ssh_run(env: dict[str, str], cwd: Path, *args: str, **streams: Any) -> subprocess.Popen[Any]:
    """`win-automation ssh run ARGS` in the background; `streams`: its stdout, stderr, text."""
    cmd = [sys.executable, "-m", "win_automation", "ssh", "run", *args]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, **streams)


def _yes(env: dict[str, str], cwd: Path, marker: str, **streams: Any) -> subprocess.Popen[Any]:
    """`ssh run --shell cmd -- 'yes MARKER'` in the background: a command that never ends and
    writes as fast as it is read."""
    return _ssh_run(env, cwd, "--shell", "cmd", "--", f"yes {marker}", **streams)


def _warm_up(env: dict[str, str], cwd: Path, path: str) -> None:
    """A first call starts the warm CLI process or helper as it exits: wait until it serves."""
    assert _wa(env, cwd, "ssh", "run", "--shell", "cmd", "--", "true").returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path == "warm-cli-process":
            if list(Path(launch.server_dir(env)).glob("*.sock")):
                return
        elif path == "in-process":
            return
        else:
            status = json.loads(_wa(env, cwd, "ssh", "persist", "status", "--json").stdout)
            if any(h["alive"] for h in status["helpers"]):
                return
        time.sleep(0.1)
    raise AssertionError(f"no warm process for {path}")


def _job(journal: Path, marker: str) -> dict[str, Any] | None:
    query = "SELECT job_id, state, error_code, error FROM jobs WHERE input_json LIKE ?"
    with (
        contextlib.suppress(sqlite3.OperationalError),
        contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=30)) as conn,
    ):
        row = conn.execute(query, (f"%{marker}%",)).fetchone()
        if row is not None:
            return dict(zip(("job_id", "state", "code", "error"), row, strict=True))
    return None


def _alive(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args[0].endswith(b"yes") and marker.encode() in args:
                return True
    return False


def _until(what: str, check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds:g}s: {what}")


@pytest.mark.parametrize("path", list(PATHS))
def test_a_paused_reader_holds_neither_the_deadline_nor_a_cancel(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, path: str
) -> None:
    env = {**cli_env, **live_sshd.env(known_hosts), **PATHS[path]}
    _warm_up(env, tmp_path, path)
    journal = tmp_path / "data" / "journal.sqlite3"
    # (kind, timeout, the paused stream: its reader never reads, its pipe is full); on stderr
    # the deadline's warning line too must not hold the job
    cases = [("deadline", "2s", "stdout"), ("deadline-stderr", "2s", "stderr"), ("cancel", "120s", "stdout")]
    markers = {kind: f"hpause-{os.getpid()}-{path}-{kind}" for kind, _, _ in cases}
    calls = {}
    for kind, timeout, stream in cases:
        command = f"yes {markers[kind]}" + (" >&2" if stream == "stderr" else "")
        if path == "warm-powershell":
            args = ["--", f"& cmd.exe /d /s /c '{command}'"]  # the stand-in runs it with sh
        else:
            args = ["--shell", "cmd", "--", command]
        paused = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: subprocess.PIPE}
        calls[kind] = _ssh_run(env, tmp_path, "--timeout", timeout, *args, **paused)
    try:
        running = _until(
            "the job runs", lambda: _alive(markers["cancel"]) and _job(journal, markers["cancel"])
        )
        cancel = _wa(env, tmp_path, "jobs", "cancel", running["job_id"])
        assert cancel.returncode == 0, cancel.stderr
        ends = {"deadline": ("failed", 124), "deadline-stderr": ("failed", 124), "cancel": ("cancelled", 130)}
        for kind, (state, code) in ends.items():
            ended = _until(
                f"{kind}: the job ends",
                lambda k=kind: (j := _job(journal, markers[k])) and j["state"] != "running" and j,
            )  # type: ignore[misc]
            assert (ended["state"], ended["code"]) == (state, code), ended
            _until(f"{kind}: its remote command is killed", lambda k=kind: not _alive(markers[k]))
            assert calls[kind].poll() is None  # its reader still paused: it waits, as any Unix tool
    finally:
        for call in calls.values():
            pipe = call.stdout or call.stderr
            assert pipe is not None
            pipe.close()  # the reader goes away: the CLI exits
            call.wait(timeout=60)


@pytest.mark.parametrize(
    ("path", "stderr", "signum"),
    [
        ("in-process", "apart", signal.SIGINT),
        ("warm-cli-process", "apart", signal.SIGINT),
        ("in-process", "same pipe", signal.SIGTERM),
        ("warm-cli-process", "same pipe", signal.SIGINT),
    ],
)
def test_ctrl_c_ends_the_cli_while_its_reader_is_paused(
    cli_env: dict[str, str],
    live_sshd: SshServer,
    known_hosts: Path,
    tmp_path: Path,
    path: str,
    stderr: str,
    signum: int,
) -> None:
    """Ctrl-C (or SIGTERM) with the live output's reader paused: the job is recorded interrupted
    and the CLI exits 130 at once, as before the output had a thread of its own (which, blocked
    in its write, held the exit until the reader came back). With stderr on the same paused pipe
    (`2>&1`), the error line waits STOPPED_ERROR_WAIT for it, then is dropped."""
    env = {**cli_env, **live_sshd.env(known_hosts), **PATHS[path]}
    _warm_up(env, tmp_path, path)
    marker = f"hpause-{os.getpid()}-{path}-ctrl-c"
    # stdout never read: its pipe fills, the writes block
    call = _yes(
        env,
        tmp_path,
        marker,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr == "same pipe" else subprocess.DEVNULL,
    )
    try:
        _until("the command runs", lambda: _alive(marker))
        time.sleep(1)  # the pipe is full by now
        call.send_signal(signum)
        stopped = time.monotonic()
        assert call.wait(timeout=15) == 130
        assert time.monotonic() - stopped < STOPPED_ERROR_WAIT + 3
    finally:
        assert call.stdout is not None
        call.stdout.close()
        if call.poll() is None:
            call.kill()
            call.wait()
    job = _job(tmp_path / "data" / "journal.sqlite3", marker)
    assert job is not None and job["state"] == "interrupted", job
    _until("its remote command is killed", lambda: not _alive(marker))


@pytest.mark.parametrize("path", ["warm-cli-process", "warm-helper", "warm-powershell"])
def test_a_paused_caller_does_not_hold_the_helpers_command_past_its_deadline(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, path: str
) -> None:
    env = {**cli_env, **live_sshd.env(known_hosts), **PATHS[path]}
    _warm_up(env, tmp_path, path)
    if path == "warm-cli-process":  # its job commands use the helper: wait for it too
        _warm_up(env, tmp_path, "warm-helper")
    marker = f"hpause-{os.getpid()}-{path}-caller"
    command = f"yes {marker}"
    args = (
        ["--", f"& cmd.exe /d /s /c '{command}'"]
        if path == "warm-powershell"
        else ["--shell", "cmd", "--", command]
    )
    call = _ssh_run(  # in a process group of its own, not orphaned: there Ctrl-Z stops
        env,
        tmp_path,
        "--timeout",
        "2s",
        *args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        _until("the command runs", lambda: _alive(marker))
        # Ctrl-Z: the launcher stops its child in the warm CLI process with it
        call.send_signal(signal.SIGTSTP if path == "warm-cli-process" else signal.SIGSTOP)
        _until("the helper ends it at its deadline", lambda: not _alive(marker))
    finally:
        call.send_signal(signal.SIGCONT)
        _, err = call.communicate(timeout=60)
    assert call.returncode == 124, err
    job = _job(tmp_path / "data" / "journal.sqlite3", marker)
    assert job is not None and (job["state"], job["code"]) == ("failed", 124), job


@pytest.mark.parametrize("path", ["in-process", "warm-cli-process"])
def test_jobs_cancel_of_a_stopped_owner_says_so_at_once_and_takes_effect_when_it_continues(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, path: str
) -> None:
    env = {**cli_env, **live_sshd.env(known_hosts), **PATHS[path]}
    _warm_up(env, tmp_path, path)
    journal = tmp_path / "data" / "journal.sqlite3"
    marker = f"hpause-{os.getpid()}-{path}-owner"
    call = _yes(
        env,
        tmp_path,
        marker,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's job: a process group that is not orphaned, whatever pytest runs in (in an
        # orphaned one, Ctrl-Z stops nothing, in-process or not: the kernel drops it)
        process_group=0,
    )
    try:
        running = _until("the job runs", lambda: _alive(marker) and _job(journal, marker))
        # Ctrl-Z (the launcher stops its child in the warm CLI process with it)
        call.send_signal(signal.SIGTSTP if path == "warm-cli-process" else signal.SIGSTOP)
        owner = _until("its owner is stopped", lambda: _owner_stopped(journal, running["job_id"]))
        started = time.monotonic()
        cancel = _wa(env, tmp_path, "jobs", "cancel", running["job_id"])
        assert time.monotonic() - started < 8  # not its 10 s wait for an owner that cannot answer
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout == (
            f"cancel requested; job {running['job_id']} is still running (owner pid {owner}"
            " is stopped (Ctrl-Z or SIGSTOP): the cancel takes effect when it continues)\n"
        )
    finally:
        call.send_signal(signal.SIGCONT)
        _, err = call.communicate(timeout=60)
    assert call.returncode == 130, err
    ended = _job(journal, marker)
    assert ended is not None and (ended["state"], ended["code"]) == ("cancelled", 130), ended
    _until("its remote command is killed", lambda: not _alive(marker))


def _owner_stopped(journal: Path, job_id: str) -> int | None:
    """The owner pid of the job once that process is stopped (state T)."""
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=30)) as conn:
        (pid,) = conn.execute("SELECT owner_pid FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T":
            return int(pid)
    return None
