"""`win-automation ssh ...` as users run it: a real CLI process against the real sshd."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixture_sshd import SshServer, helper_logs


def env_for(server: SshServer, known_hosts: Path, **overrides: object) -> dict[str, str]:
    return server.env(known_hosts, **overrides)


def test_run_json_is_a_job_with_ssh_artifacts(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = cli(
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--json",
        "--",
        "echo",
        "hello;",
        "echo",
        "oops",
        ">&2;",
        "exit",
        "3",
        env=env_for(live_sshd, known_hosts),
    )
    assert out.code == 3, out.stderr
    data = json.loads(out.stdout)
    assert (data["exit_code"], data["stdout"], data["stderr"]) == (3, "hello\n", "oops\n")
    assert data["duration_ms"] >= 0 and data["job_id"]
    folder = tmp_path / "artifacts" / data["job_id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["job_id"] == data["job_id"] and manifest["trace_id"]
    names = {a["path"]: a for a in manifest["artifacts"]}
    assert {"stdout.txt", "stderr.txt", "exit_code.txt"} <= set(names)
    assert (folder / "exit_code.txt").read_text() == "3\n" and (
        folder / "stdout.txt"
    ).read_text() == "hello\n"
    assert all(a["type"] == "ssh" and a["size_bytes"] >= 0 and len(a["sha256"]) == 64 for a in names.values())
    shown = cli("jobs", "show", data["job_id"], "--json")
    assert shown.code == 0 and "ssh-exec" in shown.stdout
    failed = json.loads(cli("jobs", "list", "--state", "failed", "--json").stdout)
    assert [(j["job_id"], j["exit_code"]) for j in failed] == [(data["job_id"], 3)]
    assert "exited with 3" in failed[0]["error"]


def test_run_streams_powershell_and_exits_with_its_code(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("ssh", "run", "--", "Write-Output 'ünï & | % ^'\nexit 42", env=env_for(live_sshd, known_hosts))
    assert out.code == 42 and out.stdout.startswith("Write-Output 'ünï & | % ^'\nexit 42")


def test_run_timeout_exits_124(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli(
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--timeout",
        "1s",
        "--",
        "echo go; sleep 60",
        env=env_for(live_sshd, known_hosts),
    )
    assert out.code == 124 and out.stdout == "go\n"
    assert "deadline" in out.stderr and "killed" in out.stderr
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert (job["state"], job["exit_code"]) == ("failed", 124)


def test_idempotent_skip_is_recorded(cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path) -> None:  # type: ignore[no-untyped-def]
    flag = remote_dir / "installed"
    args = (
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--json",
        "--idempotent",
        "--idempotent-check",
        f"test -e {flag}",
        "--",
        f"touch {flag}; echo installing",
    )
    first = cli(*args, env=env_for(live_sshd, known_hosts))
    assert first.code == 0 and json.loads(first.stdout)["stdout"] == "installing\n"
    second = cli(*args, env=env_for(live_sshd, known_hosts))
    data = json.loads(second.stdout)
    assert second.code == 0 and data["skipped"] is True and data["stdout"] == ""
    shown = json.loads(cli("jobs", "show", data["job_id"], "--json").stdout)
    assert shown["state"] == "skipped"
    bad = cli("ssh", "run", "--idempotent", "--", "x", env=env_for(live_sshd, known_hosts))
    assert bad.code == 2 and "--idempotent-check" in bad.stderr


def test_script_with_args(cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "s.ps1"
    script.write_text('param($Name)\nWrite-Output "hi $Name"\nexit 5\n', encoding="utf-8")
    out = cli("ssh", "script", str(script), "--", "Bob's", env=env_for(live_sshd, known_hosts))
    assert out.code == 5 and out.stdout.startswith("param($Name)")
    report = json.loads(live_sshd.reports.read_text().splitlines()[-1])
    assert "} 'Bob''s'" in report["script"]


def test_unknown_host_exits_5_and_trust_records_it(cli, live_sshd: SshServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    known = tmp_path / "kh" / "known_hosts"
    env = env_for(live_sshd, known)
    out = cli("ssh", "run", "--", "echo", env=env)
    assert (
        out.code == 5 and live_sshd.fingerprint() in out.stderr and "win-automation ssh trust" in out.stderr
    )
    assert "Traceback" not in out.stderr
    refused = cli("ssh", "trust", env=env)  # not a terminal, no confirmation
    assert refused.code == 2 and "--fingerprint" in refused.stderr and not known.exists()
    wrong = cli("ssh", "trust", "--fingerprint", "SHA256:" + "B" * 43, env=env)
    assert wrong.code == 5 and not known.exists()
    ok = cli("ssh", "trust", "--fingerprint", live_sshd.fingerprint(), env=env)
    assert ok.code == 0 and f"ssh-ed25519 key {live_sshd.fingerprint()}" in ok.stdout
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert cli("ssh", "run", "--shell", "cmd", "--", "echo", "trusted", env=env).stdout == "trusted\n"


def test_put_get_cli_and_errors(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    src = tmp_path / "src.txt"
    src.write_bytes(os.urandom(1000))
    put = cli("ssh", "put", "--json", str(src), str(remote_dir / "r.txt"), env=env)
    assert put.code == 0 and json.loads(put.stdout)["size_bytes"] == 1000
    got = cli("ssh", "get", str(remote_dir / "r.txt"), str(tmp_path / "back.txt"), env=env)
    assert got.code == 0 and (tmp_path / "back.txt").read_bytes() == src.read_bytes()
    missing = cli("ssh", "get", str(remote_dir / "none"), str(tmp_path / "n.txt"), env=env)
    assert missing.code == 1 and missing.stderr.strip().endswith("does not exist"), (
        f"{missing.stderr}\n{helper_logs(tmp_path / 'data', live_sshd)}"
    )


def test_secrets_never_reach_output_or_artifacts(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts, key_file="", password="Sekr3t-Pass-word")
    env.pop("WIN_AUTOMATION_SSH_KEY_FILE")
    out = cli("--debug", "ssh", "run", "--shell", "cmd", "--json", "--", "echo", "x", env=env)
    assert out.code == 4 and "Sekr3t-Pass-word" not in out.stdout + out.stderr
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            assert b"Sekr3t-Pass-word" not in path.read_bytes()
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"Sekr3t-Pass-word" not in path.read_bytes()


def test_run_streams_output_before_the_command_ends(
    live_sshd: SshServer, known_hosts: Path, cli_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "win_automation",
            "ssh",
            "run",
            "--shell",
            "cmd",
            "--",
            "echo first; sleep 2; echo second",
        ],
        env={**cli_env, **env_for(live_sshd, known_hosts)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    started = time.monotonic()
    first = proc.stdout.readline()
    seen_after = time.monotonic() - started
    rest = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(30) == 0
    assert (first, rest) == (b"first\n", b"second\n")
    assert seen_after < time.monotonic() - started - 1.5  # the first line came a good while before the end


def test_get_shows_a_progress_bar_on_a_terminal(
    live_sshd: SshServer, known_hosts: Path, remote_dir: Path, cli_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import pty
    import subprocess
    import sys

    (remote_dir / "p.bin").write_bytes(os.urandom(3 << 20))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "win_automation",
            "ssh",
            "get",
            str(remote_dir / "p.bin"),
            str(tmp_path / "p.bin"),
        ],
        env={**cli_env, **env_for(live_sshd, known_hosts), "COLUMNS": "100"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(30) == 0
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "get p.bin" in screen and "MB" in screen
    assert (tmp_path / "p.bin").stat().st_size == 3 << 20


def test_wrong_passphrase_never_shown(cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    key = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "Right-Phrase-9", "-f", str(key)], check=True)
    env = env_for(live_sshd, known_hosts, key_file=str(key))
    env["WIN_AUTOMATION_SSH_KEY_PASSPHRASE"] = "Wrong-Phrase-7"
    out = cli("--debug", "ssh", "run", "--", "echo", env=env)
    assert out.code == 4 and "ssh.key_file" in out.stderr
    assert "Wrong-Phrase-7" not in out.stdout + out.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "enc":
            assert b"Wrong-Phrase-7" not in path.read_bytes(), path


def test_bad_options_are_one_line_usage_errors(cli) -> None:  # type: ignore[no-untyped-def]
    for args, needle in (
        (("ssh", "run", "--timeout", "soon", "--", "x"), "--timeout: must be a duration"),
        (("ssh", "run", "--shell", "bash", "--", "x"), "--shell: must be powershell or cmd"),
        (("ssh", "trust", "--fingerprint", "MD5:xx"), "--fingerprint: must start with 'SHA256:'"),
        (("ssh", "run", "--", ""), "input.command: String should have at least 1 character"),
    ):
        out = cli(*args)
        last = out.stderr.strip().splitlines()[-1]
        assert out.code == 2 and last.startswith(f"error: {needle}"), out.stderr
        assert "Traceback" not in out.stderr


def test_large_output_stays_out_of_the_step_payload_but_json_has_it_whole(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from win_automation.jobs.journal import Journal
    from workflows.ssh_exec import OUTPUT_PREVIEW_CHARS

    size = 3 * OUTPUT_PREVIEW_CHARS + 5
    env = env_for(live_sshd, known_hosts)
    out = cli(
        "ssh", "run", "--shell", "cmd", "--json", "--", f"head -c {size} /dev/zero | tr '\\0' a", env=env
    )
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["stdout"] == "a" * size
    journal = Journal.open(tmp_path / "data")
    try:
        step = next(s for s in journal.steps(data["job_id"]) if s.name == "exec")
    finally:
        journal.close()
    assert step.output_json is not None
    kept = json.loads(step.output_json)
    assert kept["stdout_truncated"] is True and kept["stdout"] == "a" * OUTPUT_PREVIEW_CHARS


RUNS = 8  # seconds the cancelled command would run


def test_cancel_stops_the_running_remote_command(
    live_sshd: SshServer, known_hosts: Path, remote_dir: Path, cli, cli_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    done = remote_dir / "done"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "win_automation",
            "ssh",
            "run",
            "--shell",
            "cmd",
            "--",
            f"echo go; sleep {RUNS}; touch {done}",
        ],
        env={**cli_env, **env_for(live_sshd, known_hosts)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
    went = time.monotonic()
    (job,) = json.loads(cli("jobs", "list", "--state", "running", "--json").stdout)
    started = time.monotonic()
    cancelled = cli("jobs", "cancel", job["job_id"], "--wait", "5s")
    assert cancelled.code == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert time.monotonic() - started < 2.5  # the command stopped, not its run
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    # the command would have ended by now; under load the calls above took seconds (CI: over its
    # first 3 s run, which then ended before it was cancelled)
    assert time.monotonic() - went < RUNS, "too slow to show anything: the command's run was over"
    time.sleep(RUNS + 0.5 - (time.monotonic() - went))
    assert not done.exists(), "the remote command ran on after the cancel"
    shown = json.loads(cli("jobs", "show", job["job_id"], "--json").stdout)
    exec_step = next(s for s in shown["steps"] if s["name"] == "exec")
    assert shown["state"] == "cancelled" and exec_step["state"] == "cancelled"
    assert "remote process tree was killed" in exec_step["error"]


@pytest.mark.parametrize("persist", ["0", "5m"], ids=["direct", "warm-helper"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_records_an_ssh_job_interrupted_like_run(
    live_sshd: SshServer, known_hosts: Path, cli, cli_env, tmp_path: Path, signame: str, persist: str
) -> None:  # type: ignore[no-untyped-def]
    """... and kills the remote command's tree, as a cancel does: it ran on (a channel's end does
    not end a command that prints nothing), and `jobs resume` then ran it twice at once."""
    import signal
    import subprocess
    import sys
    import time
    import uuid

    signum = getattr(signal, signame)
    sleep = f"sleep 20.{uuid.uuid4().int % 10**6:06d}"  # its own: pgrep finds only this test's
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", f"echo go; {sleep}"],
        env={**cli_env, **env_for(live_sshd, known_hosts, persist=persist)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),  # as from a terminal, under nohup too
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
    running = lambda: subprocess.run(["pgrep", "-f", sleep], capture_output=True).returncode == 0  # noqa: E731
    while not running():
        time.sleep(0.02)
    # (on a posix VM the PID it is killed by comes on stderr, which may arrive after stdout's
    # first line: a moment for it; a Windows command is killed by a needle known from the start)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130 and b"Traceback" not in err, err
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert job["state"] == "interrupted"
    assert f"jobs resume {job['job_id']}" in err.decode()
    ended = time.monotonic()
    while running() and time.monotonic() - ended < 3:
        time.sleep(0.1)
    assert not running(), "the remote command ran on after the CLI was interrupted"


def test_the_error_line_starts_its_own_line_after_live_stderr_cut_mid_line(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """A timeout (or a cap) stops output mid-line: the error line was glued to it. A piped stdout
    stays byte for byte what the command wrote."""
    env = env_for(live_sshd, known_hosts)
    res = cli(
        "ssh", "run", "--timeout", "2s", "--shell", "cmd", "--", "printf partial >&2; sleep 30", env=env
    )
    assert res.code == 124, res.stderr
    first, *rest = res.stderr.splitlines()
    assert first == "partial" and rest[0].startswith("ts=") and " level=warn " in rest[0], res.stderr
    assert rest[-1].startswith("error: the command passed its deadline"), res.stderr
    res = cli("ssh", "run", "--timeout", "2s", "--shell", "cmd", "--", "printf partial; sleep 30", env=env)
    assert res.code == 124 and res.stdout == "partial", res.stdout
    assert res.stderr.startswith("ts=") and res.stderr.splitlines()[-1].startswith("error: "), res.stderr
