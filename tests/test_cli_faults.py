"""CLI faults as users meet them: a corrupt known-hosts file, output that cannot be written,
a command too long for the remote side, a journal locked by another process."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_jobs import JournalLock, list_jobs
from fixture_sshd import SshServer

from win_automation.cli import launch
from win_automation.jobs.storage import BUSY_TIMEOUT_SECONDS


def test_corrupt_known_hosts_is_exit_5_in_one_line_and_trust_keeps_the_file(
    cli, live_sshd: SshServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    known = tmp_path / "known_hosts"
    good = live_sshd.host_key_line().encode()
    other = b"other.example ssh-ed25519 " + good.split()[2] + b"\n"
    for bad in (b"\xff\xfe\x00garbage\n", b"h ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\n"):
        known.write_bytes(other + bad + good)
        env = live_sshd.env(known)
        out = cli("ssh", "run", "--shell", "cmd", "--", "echo", "hi", env=env)
        assert out.code == 5 and out.stdout == "", out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
        assert "known-hosts file" in out.stderr
        assert str(known) in out.stderr and "line 2" in out.stderr
        trust = cli("ssh", "trust", "--fingerprint", live_sshd.fingerprint(), "--replace", env=env)
        assert trust.code == 5 and "line 2" in trust.stderr and "Traceback" not in trust.stderr
        assert known.read_bytes() == other + bad + good


def _alive(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes() and b"bash" not in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def _start_warm_cli_process(env: dict[str, str], cwd: Path) -> None:
    """A job command starts the warm CLI process as it exits: wait for its socket."""
    cmd = [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", "true"]
    subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=60)
    _wait_for_warm_cli_process(env)


def _start_warm_helper(env: dict[str, str], cwd: Path) -> None:
    """A job command starts the warm-connection helper as it exits: wait for its socket."""
    cmd = [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", "true"]
    subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=60)
    folder = Path(env["WIN_AUTOMATION_DATA_DIR"]) / "ssh-persist"
    deadline = time.monotonic() + 60
    while not list(folder.glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.glob("*.sock")), "no warm-connection helper started"


def _wait_for_warm_cli_process(env: dict[str, str]) -> None:
    folder = Path(launch.server_dir(env))
    deadline = time.monotonic() + 60
    while not list(folder.glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.glob("*.sock")), "no warm CLI process started"


@pytest.mark.parametrize("served", [False, True], ids=["in-process", "warm-cli-process"])
def test_output_that_cannot_be_written_stops_the_job_and_records_it(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, served: bool
) -> None:
    env = {**cli_env, **live_sshd.env(known_hosts), "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0"}
    wa = f"{sys.executable} -m win_automation"
    if served:
        _start_warm_cli_process(env, tmp_path)
    rc = tmp_path / "rc"
    cases = [
        (f"| head -c1 >/dev/null; echo ${{PIPESTATUS[0]}} >{rc}", 1, "", "Broken pipe"),
        (
            f">/dev/full; echo $? >{rc}",
            74,
            "error: cannot write the output: No space left on device\n",
            "No space left on device",
        ),
    ]
    for index, (tail, code, said, why) in enumerate(cases):
        marker = f"hcli-{os.getpid()}-{served}-{index}"
        err = tmp_path / "err"
        started = time.monotonic()
        subprocess.run(
            ["bash", "-c", f"{wa} ssh run --shell cmd --timeout 120s -- 'yes {marker}' 2>{err} {tail}"],
            env=env,
            cwd=tmp_path,
            timeout=100,
            stdin=subprocess.DEVNULL,
            check=True,
        )
        assert rc.read_text().strip() == str(code), err.read_text()
        assert time.monotonic() - started < 60  # stopped, not run to its 120 s deadline
        assert err.read_text() == said
        job = list_jobs(env, tmp_path)[0]
        assert job["state"] == "failed" and job["exit_code"] == code, job
        assert f"the live output could not be written ({why}); the command was stopped" == job["error"]
        deadline = time.monotonic() + 30
        while _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(marker), "the remote command still runs"


@pytest.mark.parametrize(
    ("served", "persist"),
    [(False, "0"), (False, "5m"), (True, "5m")],
    ids=["in-process-direct", "in-process-warm-helper", "warm-cli-process"],
)
def test_ctrl_backslash_quits_at_once_and_the_job_is_still_recorded_interrupted(
    cli_env: dict[str, str],
    live_sshd: SshServer,
    known_hosts: Path,
    tmp_path: Path,
    served: bool,
    persist: str,
) -> None:
    """Ctrl-\\ (SIGQUIT) is left as the way to quit at once, without the clean-up Ctrl-C waits
    for: the CLI dies by it, as by kill -9. What it leaves is still put right: the job is
    `interrupted`, never `running` (recorded by the warm CLI process's child, which sees its
    launcher gone, or by the next command that opens the journal), and a warm helper kills the
    remote command of a caller that died."""
    import signal
    import uuid

    env = {
        **cli_env,
        **live_sshd.env(known_hosts, persist=persist),
        "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0",
    }
    if served:
        _start_warm_cli_process(env, tmp_path)
    elif persist != "0":  # the first call connects itself, and starts the helper as it exits
        _start_warm_helper(env, tmp_path)
    marker = f"sleep 20.{uuid.uuid4().int % 10**6:06d}"  # this test's own remote command
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", f"echo go; {marker}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGQUIT, signal.SIG_DFL),  # as from a terminal
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        started = time.monotonic()
        while not _alive(marker):
            assert time.monotonic() - started < 15, "the remote command never started"
            time.sleep(0.02)
        time.sleep(0.3)  # the posix command's PID (on stderr) reached the helper
        proc.send_signal(signal.SIGQUIT)
        proc.communicate(timeout=5)
        assert proc.returncode == -signal.SIGQUIT
        deadline = time.monotonic() + 15
        while (jobs := list_jobs(env, tmp_path))[0]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [j["state"] for j in jobs] == ["interrupted"] + ["succeeded"] * (persist != "0"), jobs
        if persist != "0":  # a direct connection's command runs on (a Linux sshd does not end it)
            while _alive(marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(marker), "the remote command ran on after its caller died"
    finally:
        proc.kill()
        subprocess.run(["pkill", "-KILL", "-f", marker], check=False)


def test_a_command_too_long_for_sshd_is_refused_before_any_job_or_connection(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens on port 1: a connection attempt would be exit 3, not 2.
    env = {**live_sshd.env(known_hosts, port=1), "WIN_AUTOMATION_SSH_REMOTE_OS": "posix"}
    words = ["x" * 1000] * 300  # ~300 KiB: one argv word may be 128 KiB at most
    out = cli("ssh", "run", "--shell", "cmd", "--", *words, env=env)
    assert out.code == 2 and out.stdout == "", out.stderr
    assert out.stderr.startswith("error: COMMAND: 293 KiB") and out.stderr.count("\n") == 1, out.stderr
    assert "255 KiB" in out.stderr and "ssh script FILE" in out.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []
    under = cli("ssh", "run", "--shell", "cmd", "--", *words[:254], env=env)  # 254 KiB: tried
    assert under.code == 3, under.stderr
    # through PowerShell (and Windows cmd mode) a long script is uploaded: no limit, so tried
    for args in (("--", *words), ("--shell", "cmd", "--", *words)):
        tried = cli("ssh", "run", *args, env={**env, "WIN_AUTOMATION_SSH_REMOTE_OS": "windows"})
        assert tried.code == 3, tried.stderr


def _wait_for_the_command(journal: Path) -> None:
    """Until the job's exec step is running (the journal may not exist or have its tables yet)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = "SELECT 1 FROM steps WHERE name = 'exec' AND state = 'running'"
        uri = f"file:{journal}?mode=ro"
        with (
            contextlib.suppress(sqlite3.OperationalError),
            contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn,
        ):
            if conn.execute(running).fetchall():
                return
        time.sleep(0.05)
    raise AssertionError("the job never ran its command")


@pytest.mark.parametrize("served", [False, True], ids=["in-process", "warm-cli-process"])
def test_a_journal_locked_by_another_process_is_one_line_and_no_phantom_running_job(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path, served: bool
) -> None:
    env = {**cli_env, **live_sshd.env(known_hosts), "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0"}
    if served:
        _start_warm_cli_process(env, tmp_path)
    journal = tmp_path / "data" / "journal.sqlite3"
    cmd = [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", "sleep 4; echo done"]
    job = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_the_command(journal)
    except BaseException:
        job.kill()
        job.communicate()
        raise
    with JournalLock(journal):
        locked = time.monotonic()
        out, err = job.communicate(timeout=240)
    # the command's 4 s, then one busy timeout (the job's end is not tried a second time)
    assert time.monotonic() - locked < 4 + BUSY_TIMEOUT_SECONDS + 5
    assert job.returncode == 74, err
    assert out == "done\n"  # the command's output streamed before the journal was needed
    assert err.count("\n") == 1 and err.startswith("error: the journal "), err
    assert "locked by another process" in err and "Traceback" not in err
    record = list_jobs(env, tmp_path)[0]  # the next command that opens the journal reconciles it
    assert record["workflow"] == "ssh-exec" and record["state"] in ("failed", "interrupted"), record


def test_a_closed_std_fd_is_one_line_or_dev_null_and_no_file_takes_its_number(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """Started with fd 1 closed (`>&-`), a command says so in one line, exit 74, and runs nothing
    (no job); with fd 0 or 2 closed it runs as with /dev/null there (a usage error is still exit
    2). Each closed one is /dev/null from the start, so the journal or an artifact opened later
    cannot take its number (where a child process's output would land)."""
    env = {**cli_env, **live_sshd.env(known_hosts)}
    wa = f"{sys.executable} -m win_automation"
    err, out = tmp_path / "err", tmp_path / "out"

    def run(redirects: str, args: str) -> int:
        proc = subprocess.run(
            ["bash", "-c", f"{wa} {args} {redirects}"], env=env, cwd=tmp_path, timeout=60, check=False
        )
        return proc.returncode

    for args in ("--version", "config show", "ssh run --shell cmd -- 'echo hi'"):
        assert run(f">&- 2>{err}", args) == 74
        assert err.read_text() == "error: cannot write the output: standard output (fd 1) is closed\n"
    assert list_jobs(env, tmp_path) == []
    assert run(f"<&- >{out} 2>&-", "ssh run --shell cmd -- 'echo hi'") == 0
    assert out.read_text() == "hi\n"
    assert run(f"<&- >{out} 2>&-", "config show --bogus") == 2
    assert run(f"2>&- >{out}", "ssh run --shell cmd -- 'exit 3'") == 3
    jobs = list_jobs(env, tmp_path)
    assert [(j["state"], j["exit_code"]) for j in jobs] == [("failed", 3), ("succeeded", None)], jobs
    claim = (
        "import os, sys; from win_automation.cli.output import claim_closed_std_fds as c; c(); "
        "print([os.readlink(f'/proc/self/fd/{n}') for n in (0, 2)], sys.stdin.read(), file=sys.stdout)"
    )
    proc = subprocess.run(
        ["bash", "-c", f'{sys.executable} -c "{claim}" <&- 2>&-'], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "['/dev/null', '/dev/null'] \n", proc


def test_table_cells_are_text_with_control_characters_escaped(cli) -> None:  # type: ignore[no-untyped-def]
    """A value holding `[/red]` was a rich MarkupError traceback (config show, and for good
    `jobs list` once a job's error held such a path); `[bold]B[/bold]` was shown as `B`; an ESC
    (an OSC sequence from a path or the VM) reached the terminal raw."""
    value = "Start-X [/red] [bold]B[/bold] \x1b]0;PWN\x07"
    res = cli("config", "show", env={"WIN_AUTOMATION_ALOHA_SERVER_START_CMD": value})
    assert res.code == 0 and "Traceback" not in res.stderr, res.stderr
    assert "Start-X [/red] [bold]B[/bold] \\u001b]0;PWN\\u0007" in res.stdout
    assert "\x1b" not in res.stdout


def test_an_output_encoding_without_a_character_escapes_it(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """PYTHONIOENCODING=ascii (or a C locale without UTF-8): one `é` in the VM's output was a
    UnicodeEncodeError that stopped and failed the job; in a table, a traceback."""
    env = {**live_sshd.env(known_hosts), "PYTHONIOENCODING": "ascii"}
    res = cli("ssh", "run", "--shell", "cmd", "--", "printf 'caf\\303\\251\\n'", env=env)
    assert (res.code, res.stdout, res.stderr) == (0, "caf\\xe9\n", "")
    shown = cli("config", "show", env={**env, "WIN_AUTOMATION_ALOHA_SERVER_START_CMD": "é"})
    assert shown.code == 0 and "\\xe9" in shown.stdout and "Traceback" not in shown.stderr


def test_command_words_or_script_arguments_that_are_not_utf8_are_usage_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are not UTF-8 in argv (`$'\\xff'`): encoding tracebacks, exit 1."""
    script = tmp_path / "s.ps1"
    script.write_text("Write-Output 'x'\n")
    for args, said in (
        (("ssh", "run", "--shell", "cmd", "--", "echo \udcff"), "COMMAND echo \\udcff: not valid UTF-8"),
        (("ssh", "script", str(script), "--", "\udcff"), "ARGS \\udcff: not valid UTF-8"),
    ):
        res = cli(*args)
        assert (res.code, res.stderr) == (2, f"error: {said}\n"), args
