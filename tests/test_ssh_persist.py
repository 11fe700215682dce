"""The warm connection shared by CLI calls (ssh.persist): real CLI processes, the real sshd, the
real helper process; its faults (killed, paused, socket removed or foreign, racing starters, the
VM's sshd restarting)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixture_sshd import SshServer

from win_automation import unixsock
from win_automation.adapters import persist, persist_helper, persist_wire
from win_automation.config import Config
from win_automation.errors import ConnectError, StorageError
from win_automation.operations import transfers


def env_for(server: SshServer, known_hosts: Path, **overrides: Any) -> dict[str, str]:
    return server.env(known_hosts, **overrides)


def start_ssh_run(env: dict[str, str], command: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """`ssh run --shell cmd -- COMMAND` as a process of its own, its output read as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", command],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def helpers(cli, env: dict[str, str]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    res = cli("ssh", "persist", "status", "--json", env=env)
    assert res.code == 0, res.stderr
    return list(json.loads(res.stdout)["helpers"])


def only_helper(cli, env: dict[str, str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The one live helper; a cold call starts it in the background, so it may take a moment."""
    deadline = time.monotonic() + 15
    while True:
        found = helpers(cli, env)
        if (len(found) == 1 and found[0]["alive"]) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    (helper,) = found
    assert helper["alive"], helper
    return helper


def jobs(cli, env: dict[str, str]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return list(json.loads(cli("jobs", "list", "--json", env=env).stdout))


def test_calls_share_one_helper_and_behave_as_direct(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    first = cli("ssh", "run", "--shell", "cmd", "--json", "--", "echo out; echo err >&2; exit 3", env=env)
    assert first.code == 3, first.stderr
    helper = only_helper(cli, env)
    sock = Path(helper["socket"])
    info = sock.lstat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o600, os.geteuid())
    assert helper["vm"] == f"127.0.0.1:{live_sshd.port}"
    second = cli("ssh", "run", "--shell", "cmd", "--json", "--", "echo out; echo err >&2; exit 3", env=env)
    assert only_helper(cli, env)["pid"] == helper["pid"]
    direct = cli(
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--json",
        "--",
        "echo out; echo err >&2; exit 3",
        env={**env, "WIN_AUTOMATION_SSH_PERSIST": "0"},
    )
    shapes = []
    for res in (first, second, direct):
        data = json.loads(res.stdout)
        folder = tmp_path / "artifacts" / data["job_id"]
        shapes.append(
            (
                res.code,
                data["stdout"],
                data["stderr"],
                (folder / "stdout.txt").read_text(),
                (folder / "exit_code.txt").read_text(),
            )
        )
    assert shapes == [(3, "out\n", "err\n", "out\n", "3\n")] * 3
    assert {(j["state"], j["exit_code"]) for j in jobs(cli, env)} == {("failed", 3)}
    # streamed PowerShell, a long script uploaded and removed through the helper
    long_script = "Write-Output 'start'\n" + "# padding\n" * 1200 + "exit 7\n"
    res = cli("ssh", "run", "--", long_script, env=env)
    assert res.code == 7 and res.stdout.startswith("Write-Output 'start'")
    reports = [json.loads(line) for line in live_sshd.reports.read_text().splitlines()]
    assert reports[-1]["mode"] == "file" and reports[-1]["body"].startswith("Write-Output 'start'")
    assert not list(live_sshd.home.glob(".wa-script-*"))
    assert only_helper(cli, env)["pid"] == helper["pid"]
    stopped = cli("ssh", "persist", "stop", env=env)
    assert stopped.code == 0 and "stopped 1" in stopped.stdout
    assert helpers(cli, env) == [] and not sock.exists()


def test_a_warm_call_imports_neither_paramiko_nor_hatchet(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**cli_env, **env_for(live_sshd, known_hosts)}
    assert cli("ssh", "run", "--shell", "cmd", "--", "echo warm-up", env=env).code == 0
    only_helper(cli, env)  # started in the background by the cold call
    probe = (
        "import sys\n"
        "from win_automation.cli.app import main\n"  # in this process, not the warm CLI process
        "sys.argv = ['win-automation', 'ssh', 'run', '--shell', 'cmd', '--', 'echo hi']\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'hatchet_sdk'))\n"
        "print('HEAVY', heavy, code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.splitlines()[-1] == "HEAVY [] 0", out.stdout + out.stderr
    assert out.stdout.startswith("hi\n")
    direct = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "WIN_AUTOMATION_SSH_PERSIST": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "'paramiko'" in direct.stdout.splitlines()[-1]  # the probe does see the cold path's import


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_output_larger_than_the_buffers_streams_through_the_helper(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Neither the helper nor the calling CLI holds a command's output: their peak RSS stays far
    below its size (the helper relays each chunk as it arrives, the CLI streams it to files)."""
    env = {**cli_env, **env_for(live_sshd, known_hosts)}
    assert cli("ssh", "run", "--shell", "cmd", "--", "echo warm-up", env=env).code == 0
    helper = only_helper(cli, env)["pid"]
    before = _peak_rss_mib(helper)
    size = 160 << 20
    measure = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, code)\n"
    )
    command = ["ssh", "run", "--shell", "cmd", "--", f"head -c {size} /dev/zero | tr '\\0' x"]
    in_process = "from win_automation.cli.app import main; main()"  # the CLI in the measured process
    out = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-c", in_process, *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    peak, code = map(int, out.stdout.split())
    assert code == 0, out.stderr
    folder = max((tmp_path / "artifacts").iterdir(), key=lambda p: p.stat().st_mtime)
    assert (folder / "stdout.txt").stat().st_size == size
    assert peak < 100, f"the CLI peaked at {peak} MiB"
    assert _peak_rss_mib(helper) - before < 48, "the helper held the output in memory"
    assert only_helper(cli, env)["pid"] == helper  # it went through the warm helper


@pytest.mark.parametrize("fault", ["host key", "auth"])
def test_host_key_and_auth_errors_are_the_direct_ones(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, fault: str
) -> None:  # type: ignore[no-untyped-def]
    if fault == "host key":
        other = tmp_path / "other_known_hosts"
        other.write_text(
            f"[127.0.0.1]:{live_sshd.port} " + (live_sshd.client_key.with_suffix(".pub").read_text())
        )
        env = env_for(live_sshd, other)
    else:
        env = env_for(live_sshd, known_hosts, key_file=str(tmp_path / "no-such-key"))
    warm = cli("ssh", "run", "--shell", "cmd", "--", "echo hi", env=env)
    cold = cli(
        "ssh", "run", "--shell", "cmd", "--", "echo hi", env={**env, "WIN_AUTOMATION_SSH_PERSIST": "0"}
    )
    assert warm.code == cold.code == (5 if fault == "host key" else 4)
    assert warm.stderr.strip().splitlines()[-1] == cold.stderr.strip().splitlines()[-1]
    assert len(warm.stderr.strip().splitlines()) == 1 and "Traceback" not in warm.stderr
    assert [h for h in helpers(cli, env) if h["alive"]] == []


def test_timeout_kills_the_remote_tree_through_the_helper(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    marker = remote_dir / "survived"
    res = cli(
        "ssh", "run", "--shell", "cmd", "--timeout", "1s", "--", f"echo go; sleep 3; touch {marker}", env=env
    )
    assert res.code == 124 and res.stdout == "go\n" and "killed" in res.stderr
    time.sleep(2.5)
    assert not marker.exists()
    assert [(j["state"], j["exit_code"]) for j in jobs(cli, env)] == [("failed", 124)]


def test_helper_killed_mid_command_fails_the_job_with_3_and_is_replaced(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    old = only_helper(cli, env)["pid"]
    proc = start_ssh_run({**cli_env, **env}, "echo started; sleep 20")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"  # running in the helper
        os.kill(old, signal.SIGKILL)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - started < 10
    assert proc.returncode == 3 and "helper" in stderr and "died" in stderr
    assert stderr.strip().count("\n") == 0 or "Traceback" not in stderr
    again = cli("ssh", "run", "--shell", "cmd", "--", "echo again", env=env)
    assert again.code == 0 and again.stdout == "again\n"
    assert only_helper(cli, env)["pid"] != old
    assert [j["state"] for j in jobs(cli, env)].count("running") == 0


def dead_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_socket_removed_or_helper_paused_starts_a_fresh_helper(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts, connect_timeout=1)
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    first = only_helper(cli, env)
    Path(first["socket"]).unlink()
    assert cli("ssh", "run", "--shell", "cmd", "--", "echo one", env=env).stdout == "one\n"
    second = only_helper(cli, env)
    assert second["pid"] != first["pid"]
    deadline = time.monotonic() + 5  # the first helper saw its socket go and left
    while os.path.exists(f"/proc/{first['pid']}/cmdline") and time.monotonic() < deadline:
        if not Path(f"/proc/{first['pid']}/cmdline").read_bytes():
            break
        time.sleep(0.1)
    assert (
        not os.path.exists(f"/proc/{first['pid']}/cmdline")
        or not Path(f"/proc/{first['pid']}/cmdline").read_bytes()
    )
    os.kill(second["pid"], signal.SIGSTOP)  # accepts (the backlog) but never answers
    try:
        res = cli("ssh", "run", "--shell", "cmd", "--", "echo two", env=env, timeout=30)
        assert res.code == 0 and res.stdout == "two\n"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the call replaced it: SIGKILL
            os.kill(second["pid"], signal.SIGCONT)
    assert dead_or_zombie(second["pid"])  # the paused helper was killed, not left behind
    assert only_helper(cli, env)["pid"] not in (first["pid"], second["pid"])


@pytest.mark.parametrize("fault", ["other user", "mode 0644", "not a socket"])
def test_a_foreign_socket_is_refused_in_one_line(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, fault: str
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    config = Config.model_validate({"ssh": live_sshd.settings(known_hosts)})
    path = persist_wire.socket_path(Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), config.ssh)
    path.parent.mkdir(parents=True, mode=0o700)
    if fault == "not a socket":
        path.write_text("")
        path.chmod(0o600)
    else:
        server = socket.socket(socket.AF_UNIX)
        with unixsock.sun_path(path) as where:  # a deep tmp_path (pytest-xdist's) passes sun_path's 108
            server.bind(where)
        server.close()
        path.chmod(0o644 if fault == "mode 0644" else 0o600)
        if fault == "other user":
            if os.geteuid() != 0:
                pytest.fail("this test runs as root (it hands the socket to another user)")
            os.chown(path, 65534, 65534)
    res = cli("ssh", "run", "--shell", "cmd", "--", "echo hi", env=env)
    assert res.code == 74 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"refusing {path}" in res.stderr and res.stdout == ""
    assert path.exists() and not path.with_suffix(".json").exists()  # nothing replaced it
    with pytest.raises(StorageError):
        persist_wire.check_socket(path)


def test_corrupt_info_files_are_listed_dead_and_a_mute_helper_is_still_replaced(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """The info files beside the sockets (pid, started) empty, truncated, not an object, or with
    a pid no process can have: `ssh persist status|stop` list them as not alive, a call replaces
    a helper that accepts but never answers (its pid unknown) as any other, and `ssh persist
    stop` still stops a live helper whose info is unreadable; no traceback."""
    env = env_for(live_sshd, known_hosts, connect_timeout=1)
    data = Path(cli_env["WIN_AUTOMATION_DATA_DIR"])
    config = Config.model_validate({"ssh": live_sshd.settings(known_hosts, connect_timeout=1)})
    sock = persist_wire.socket_path(data, config.ssh)
    sock.parent.mkdir(parents=True, mode=0o700)
    mute = socket.socket(socket.AF_UNIX)
    with unixsock.sun_path(sock) as where:
        mute.bind(where)
    sock.chmod(0o600)
    mute.listen(8)  # accepts (the kernel does), never answers
    servers = data / "cli-server"
    servers.mkdir(mode=0o700)
    try:
        for content in ("", '{"pid": 12', "[]", "null", '"x"', '{"pid": 99999999999999999999}'):
            sock.with_suffix(".json").write_text(content)
            (servers / "0123456789abcdef0123.json").write_text(content)
            res = cli("ssh", "persist", "status", "--json", env=env)
            assert res.code == 0 and res.stderr == "", (content, res.stderr)
            status = json.loads(res.stdout)
            assert [h["alive"] for h in status["helpers"]] == [False], content
            assert [s["alive"] for s in status["cli_servers"]] == [False], content
        res = cli("ssh", "run", "--shell", "cmd", "--", "echo replaced", env=env)
        assert res.code == 0 and res.stdout == "replaced\n", res.stderr
    finally:
        mute.close()
    pid = only_helper(cli, env)["pid"]
    sock.with_suffix(".json").write_text('{"pid": ')  # the live helper's, truncated
    stop = cli("ssh", "persist", "stop", "--json", env=env)  # this VM's (not --all): its VM is unknown
    assert stop.code == 0 and stop.stderr == "", stop.stderr
    deadline = time.monotonic() + 10
    while persist_wire.is_helper(pid, sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not persist_wire.is_helper(pid, sock) and not sock.exists()


def test_fifos_as_the_helpers_info_file_and_log_block_nothing(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """A FIFO nobody reads or writes in place of a helper's `.json` and `.log`: `ssh persist
    status` does not wait on it, the job command that starts the helper as it exits does not
    block opening the log, and the helper replaces the info file with its own."""
    env = env_for(live_sshd, known_hosts)
    config = Config.model_validate({"ssh": live_sshd.settings(known_hosts)})
    sock = persist_wire.socket_path(Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), config.ssh)
    sock.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(sock.with_suffix(".json"), 0o600)
    os.mkfifo(sock.with_suffix(".log"), 0o600)
    res = cli("ssh", "persist", "status", "--json", env=env, timeout=20)
    assert res.code == 0 and [h["pid"] for h in json.loads(res.stdout)["helpers"]] == [None], res.stderr
    res = cli("ssh", "run", "--shell", "cmd", "--", "echo cold", env=env, timeout=30)
    assert res.code == 0 and res.stdout == "cold\n", res.stderr
    helper = only_helper(cli, env)  # started as the call exited, its info file its own
    assert helper["alive"] and sock.with_suffix(".json").is_file()
    warm = cli("ssh", "run", "--shell", "cmd", "--", "echo warm", env=env, timeout=30)
    assert warm.code == 0 and only_helper(cli, env)["pid"] == helper["pid"]


def test_a_helper_whose_starter_never_sends_its_request_ends_by_itself(tmp_path: Path) -> None:
    """A starter paused (or wedged) before it wrote the request, its end of the pipe still open:
    the detached helper waited on it for good. It ends at IMPORT_LIMIT (SIGALRM), as one stuck
    anywhere in its start does."""
    sock = tmp_path / "vm.sock"
    starter = subprocess.Popen(  # what persist_wire.spawn starts; nothing written to its stdin
        [sys.executable, "-m", persist_wire.HELPER_MODULE, str(sock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert starter.wait(10) == 0  # its first fork: the helper lives on, detached
        started = time.monotonic()

        def helper() -> list[int]:
            return [
                int(p.parent.name)
                for p in Path("/proc").glob("[0-9]*/cmdline")
                if persist_wire.is_helper(int(p.parent.name), sock) and not dead_or_zombie(int(p.parent.name))
            ]

        assert len(helper()) == 1
        while helper() and time.monotonic() - started < persist_helper.IMPORT_LIMIT + 10:
            time.sleep(0.2)
        assert not helper(), "the helper still waits for its request"
        assert time.monotonic() - started > persist_helper.IMPORT_LIMIT - 2  # its limit, not an error
        assert not sock.exists()
    finally:
        assert starter.stdin is not None
        starter.stdin.close()


def test_a_helper_that_cannot_record_itself_leaves_no_socket(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """Its info file cannot be written (a folder in its place; a full disk alike): the helper a
    cold call starts leaves no socket that nothing serves, and no traceback in its log."""
    env = {**env_for(live_sshd, known_hosts), "PYTHONFAULTHANDLER": "1"}  # its stacks, if it lingers
    config = Config.model_validate({"ssh": live_sshd.settings(known_hosts)})
    sock = persist_wire.socket_path(Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), config.ssh)
    sock.parent.mkdir(parents=True, mode=0o700)
    sock.with_suffix(".json").mkdir()

    def helpers() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if b"persist_helper" in cmdline.read_bytes() and os.fsencode(sock) in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
        return found

    def running() -> bool:
        return bool(helpers())

    res = cli("ssh", "run", "--shell", "cmd", "--", "echo cold", env=env)
    assert res.code == 0 and res.stdout == "cold\n", res.stderr
    # started as the call exited: it connects, then fails; within its own connect policy (3
    # attempts of ssh.connect_timeout, as persist_wire.spawn waits), which a loaded machine needs
    deadline = time.monotonic() + 3 * config.ssh.connect_timeout + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    lingering = helpers()
    for pid in lingering:  # its threads' Python stacks into its log (faulthandler), then gone
        with contextlib.suppress(OSError):  # it may have exited just now
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
            print(pid, f"{age:.1f} s old", [line for line in status if line.startswith(("State", "Sig"))])
            os.kill(pid, signal.SIGABRT)
            time.sleep(0.5)
    log = sock.with_suffix(".log").read_text()
    assert not lingering and not sock.exists(), log
    assert "Traceback" not in log
    again = cli("ssh", "run", "--shell", "cmd", "--", "echo again", env=env)
    assert again.code == 0 and again.stdout == "again\n", again.stderr


def test_two_processes_starting_at_once_share_one_helper(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**cli_env, **env_for(live_sshd, known_hosts)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", f"echo {n}"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [o[0] for o in outs] == ["0\n", "1\n", "2\n"]
    helper = only_helper(cli, env)
    deadline = time.monotonic() + 10  # each cold call started a helper: the later ones leave
    while time.monotonic() < deadline:
        running = subprocess.run(["pgrep", "-f", Path(helper["socket"]).name], capture_output=True, text=True)
        if running.stdout.split() == [str(helper["pid"])]:
            break
        time.sleep(0.1)
    assert running.stdout.split() == [str(helper["pid"])]
    again = cli("ssh", "run", "--shell", "cmd", "--", "echo 3", env=env)
    assert again.stdout == "3\n" and only_helper(cli, env)["pid"] == helper["pid"]


def test_a_start_up_lock_held_for_good_keeps_no_helper_waiting(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A process that holds the helpers' start-up lock and never lets go (paused; not ours): the
    job commands run in-process, as they should, but each left one more helper waiting for the
    lock for good (9 calls: 9 helpers, 416 MB). Now a helper gives up after its start budget."""
    env = {**cli_env, **env_for(live_sshd, known_hosts, connect_timeout=1)}
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    sock = Path(only_helper(cli, env)["socket"])
    assert cli("ssh", "persist", "stop", env=env).code == 0
    holder = subprocess.Popen(["flock", unixsock.lock_path(sock), "sleep", "120"])
    try:
        time.sleep(0.3)
        for n in range(2):
            res = cli("ssh", "run", "--shell", "cmd", "--", f"echo {n}", env=env)
            assert (res.code, res.stdout) == (0, f"{n}\n"), res.stderr
        waiting = lambda: unixsock.processes(sock.parent, persist_wire.HELPER_MODULE)  # noqa: E731
        assert waiting(), "no helper was started"
        budget = persist_wire.start_budget(live_sshd.config(known_hosts, connect_timeout=1))
        deadline = time.monotonic() + budget + 5
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert waiting() == {}, "helpers still wait for the start-up lock"
        assert "has been held for 13s by another process (paused?)" in sock.with_suffix(".log").read_text()
    finally:
        holder.kill()
        holder.wait()


def test_sshd_restarting_under_a_warm_helper(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    env = env_for(live_sshd, known_hosts)
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    pid = only_helper(cli, env)["pid"]
    live_sshd.stop()
    try:
        down = cli("ssh", "run", "--shell", "cmd", "--", "echo down", env=env, timeout=60)
        assert down.code == 3 and "connect" in down.stderr and "Traceback" not in down.stderr
    finally:
        live_sshd.start()
    res = cli("ssh", "run", "--shell", "cmd", "--", "echo back", env=env)
    assert res.code == 0 and res.stdout == "back\n"
    assert only_helper(cli, env)["pid"] == pid  # the same helper reconnected (host key checked again)
    assert [j["state"] for j in jobs(cli, env)].count("running") == 0


def test_stop_ends_a_helper_that_is_still_connecting(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A job command starts the helper as it exits (in the background); `ssh persist stop` right
    after (a script's clean-up) missed one still connecting, which then served for ssh.persist.
    Here it connects to a port that accepts and never answers (30 s of connect timeout)."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)  # the kernel accepts; no SSH banner ever comes
    try:
        cfg = live_sshd.config(known_hosts, port=mute.getsockname()[1], connect_timeout=30)
        conn = persist.WarmConnection(cfg, tmp_path / "data", 60)
        persist_wire.spawn(cfg, conn.sock, 60, wait=False)
        folder = persist_wire.persist_dir(tmp_path / "data")
        deadline = time.monotonic() + 15
        while not unixsock.processes(folder, persist_wire.HELPER_MODULE) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = unixsock.processes(folder, persist_wire.HELPER_MODULE)
        stopped = persist_wire.stop_helpers(tmp_path / "data")
        assert [(h["pid"], h["state"]) for h in stopped] == [(pid, "starting")]
        assert not persist_wire.is_helper(pid, conn.sock) and not conn.sock.exists()
        assert unixsock.processes(folder, persist_wire.HELPER_MODULE) == {}
    finally:
        mute.close()


def test_idle_helper_leaves_and_persist_0_starts_none(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    off = env_for(live_sshd, known_hosts, persist="0")
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=off).code == 0
    assert helpers(cli, off) == []
    assert "ssh.persist is 0" in cli("ssh", "persist", "status", env=off).stdout
    # 3 s, not 1: under load the helper left before the first `persist status` had found it
    short = env_for(live_sshd, known_hosts, persist="3s")
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=short).code == 0
    sock = Path(only_helper(cli, short)["socket"])
    deadline = time.monotonic() + 15
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sock.exists() and helpers(cli, short) == []
    bad = cli(
        "ssh", "run", "--shell", "cmd", "--", "true", env=env_for(live_sshd, known_hosts, persist="-1s")
    )
    assert bad.code == 2 and "ssh.persist" in bad.stderr


def test_cancel_through_the_helper_stops_the_command(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, remote_dir: Path
) -> None:
    cfg = live_sshd.config(known_hosts)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    try:
        flag = threading.Event()
        seen: list[bytes] = []
        at: list[float] = []

        def cancel() -> None:
            at.append(time.monotonic())
            flag.set()

        def output(data: bytes) -> None:  # cancelled once it runs (not on a timer from the
            seen.append(data)  # start: a loaded machine may take long to start the helper)
            threading.Timer(0.3, cancel).start()

        outcome = conn.exec("echo a; sleep 20", timeout=60, on_stdout=output, cancelled=flag.is_set)
        assert outcome.cancelled and time.monotonic() - at[0] < 5 and b"".join(seen) == b"a\n"
        again = conn.exec("echo b", timeout=10)
        assert (again.stdout, again.exit_status) == (b"b\n", 0)
    finally:
        persist_wire.stop_helpers(tmp_path / "data")


@pytest.mark.parametrize("stop", ["deadline", "cancel"])
def test_a_command_that_floods_its_output_stops_at_its_deadline_or_cancel_through_the_helper(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, stop: str
) -> None:
    """`yes` through the helper: the helper reads the channel as fast as the relay takes it, so
    its buffer never ran empty and the deadline (2 s ran 12 s) or the cancel (`| head -c1`: a
    minute) waited until it did by chance."""
    cfg = live_sshd.config(known_hosts)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    try:
        assert conn.exec("true", timeout=60, keep=False).exit_status == 0  # the helper is up
        flag = threading.Event()
        seen = [0]

        def slow_sink(data: bytes) -> None:  # slower than `yes`: the buffers never run empty
            if not seen[
                0
            ]:  # cancelled a second into the flood (CI: a loaded machine took longer to start it)
                threading.Timer(1.0, flag.set).start()
            seen[0] += len(data)
            time.sleep(0.002)

        started = time.monotonic()
        outcome = conn.exec(
            "yes flood",
            timeout=1.0 if stop == "deadline" else 120,
            cancelled=flag.is_set if stop == "cancel" else None,
            keep=False,
            on_stdout=slow_sink,
        )
        assert time.monotonic() - started < 5
        assert (outcome.timed_out, outcome.cancelled) == (stop == "deadline", stop == "cancel")
        assert seen[0] > 1024 * 1024
    finally:
        persist_wire.stop_helpers(tmp_path / "data")


def _fill_backlog(sock: Path) -> list[socket.socket]:
    """Connections that fill a listening socket's backlog (nobody accepts them): the next
    blocking connect() would wait for as long as they stay."""
    fillers: list[socket.socket] = []
    while len(fillers) < 4096:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            with unixsock.sun_path(sock) as where:
                filler.connect(where)
        except BlockingIOError:
            filler.close()
            return fillers
        fillers.append(filler)
    raise AssertionError("the backlog never filled")


def test_a_paused_helper_with_a_full_backlog_is_replaced_within_a_bound(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """A paused helper whose listen backlog is full: connect() would block without bound; the
    call waits at most ssh.connect_timeout for room, then replaces the helper."""
    env = env_for(live_sshd, known_hosts, connect_timeout=1)
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    old = only_helper(cli, env)
    os.kill(old["pid"], signal.SIGSTOP)
    fillers: list[socket.socket] = []
    try:
        fillers = _fill_backlog(Path(old["socket"]))
        started = time.monotonic()
        res = cli("ssh", "run", "--shell", "cmd", "--", "echo after", env=env, timeout=45)
        elapsed = time.monotonic() - started
        assert res.code == 0 and res.stdout == "after\n", res.stderr
        assert elapsed < 20, elapsed
    finally:
        with contextlib.suppress(ProcessLookupError):  # the call replaced it: SIGKILL
            os.kill(old["pid"], signal.SIGCONT)
        for filler in fillers:
            filler.close()
    assert only_helper(cli, env)["pid"] != old["pid"]


def test_probing_a_socket_whose_backlog_is_full_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unixsock.sun_path(path) as where:
        server.bind(where)
    server.listen(1)  # never accepts
    fillers = _fill_backlog(path)
    try:
        result: list[bool] = []
        probe = threading.Thread(target=lambda: result.append(unixsock.serving(path)), daemon=True)
        started = time.monotonic()
        probe.start()
        probe.join(20)
        assert not probe.is_alive() and time.monotonic() - started < 20
        assert result == [True]  # someone listens there (paused or swamped): it is not replaced here
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert unixsock.serving(path) is False  # nobody listens any more


def test_an_idle_client_is_dropped_and_others_are_served_meanwhile(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A client that connects to the helper and sends nothing is dropped after
    ssh.connect_timeout (it neither holds a thread nor keeps the helper from idling out)."""
    cfg = live_sshd.config(known_hosts, connect_timeout=1)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert conn.exec("true", timeout=20).exit_status == 0  # starts the helper
        with unixsock.sun_path(conn.sock) as where:
            idle.connect(where)
        idle.settimeout(30)
        started = time.monotonic()
        other = conn.exec("echo other", timeout=20)
        assert (other.stdout, other.exit_status) == (b"other\n", 0)
        assert idle.recv(1) == b""  # the helper hung up on it
        assert time.monotonic() - started < 15
    finally:
        idle.close()
        persist_wire.stop_helpers(tmp_path / "data")


def test_stop_lets_a_running_command_finish_and_takes_no_new_ones(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`ssh persist stop` while a command runs through the helper: the helper takes no new
    request (its socket goes at once, the next call starts a fresh helper), the running job ends
    with its real result, and the old helper leaves once it has."""
    env = env_for(live_sshd, known_hosts)
    assert cli("ssh", "run", "--shell", "cmd", "--", "true", env=env).code == 0
    old = only_helper(cli, env)
    marker, release = remote_dir / "started", remote_dir / "release"
    job = start_ssh_run(  # runs until the test has looked (not a fixed time: a busy machine took longer)
        {**cli_env, **env},
        f"touch {marker}; while [ ! -e {release} ]; do sleep 0.05; done; echo done",
        tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        stop = cli("ssh", "persist", "stop", env=env)
        assert stop.code == 0 and "stopped 1" in stop.stdout, stop.stderr
        assert job.poll() is None  # stop did not wait for the job, nor end it
        assert not Path(old["socket"]).exists()
        new = cli("ssh", "run", "--shell", "cmd", "--", "echo new", env=env)
        assert new.code == 0 and new.stdout == "new\n", new.stderr
        deadline = time.monotonic() + 15  # the new call starts its helper in the background
        while "alive" not in (listed := {h["pid"]: h["state"] for h in helpers(cli, env)}).values():
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert listed[old["pid"]] == "draining" and "alive" in listed.values(), listed
        shown = cli("ssh", "persist", "status", env=env).stdout
        assert "draining" in shown and str(old["pid"]) in shown
        again = cli("ssh", "persist", "stop", env=env)  # stops the new one; the draining one finishes
        assert again.code == 0 and "stopped 1" in again.stdout and job.poll() is None, again.stderr
        assert persist_wire.is_helper(old["pid"], Path(old["socket"]))
        release.touch()
        out, err = job.communicate(timeout=60)
    finally:
        release.touch()
        if job.poll() is None:
            job.kill()
            job.wait()
    assert (job.returncode, out) == (0, "done\n"), err
    deadline = time.monotonic() + 15
    while persist_wire.is_helper(old["pid"], Path(old["socket"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not persist_wire.is_helper(old["pid"], Path(old["socket"]))
    assert not list(Path(old["socket"]).parent.glob("*.draining-*"))
    assert [j["state"] for j in jobs(cli, env)].count("running") == 0


def test_a_mute_connection_under_the_helper_is_reconnected_before_the_command_starts(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, remote_dir: Path
) -> None:
    """The helper's SSH connection goes mute (its sshd paused: TCP alive, nothing answered): a
    channel that does not open within ssh.connect_timeout means no command was sent, so the
    helper drops the connection and reconnects once; the command and a get run once, whole."""
    cfg = live_sshd.config(known_hosts, connect_timeout=1)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    paused: list[int] = []
    try:
        assert conn.exec("true", timeout=20).exit_status == 0  # the helper and its one connection
        paused = live_sshd.session_pids()
        assert paused
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        marker = remote_dir / "ran"
        started = time.monotonic()
        outcome = conn.exec(f"echo x >> {marker}; echo after", timeout=20)
        assert (outcome.stdout, outcome.exit_status) == (b"after\n", 0)
        assert marker.read_text() == "x\n"
        assert time.monotonic() - started < 15
        for pid in live_sshd.session_pids():  # the new connection goes mute too
            if pid not in paused:
                os.kill(pid, signal.SIGSTOP)
                paused.append(pid)
        script = remote_dir / "upload.txt"  # the first SFTP use on a (new) mute connection
        upload = threading.Thread(target=conn.put_bytes, args=(str(script), b"uploaded"), daemon=True)
        upload.start()
        upload.join(30)  # not paramiko's default wait for a channel: an hour
        assert not upload.is_alive() and script.read_bytes() == b"uploaded"
        for pid in live_sshd.session_pids():
            if pid not in paused:
                os.kill(pid, signal.SIGSTOP)
                paused.append(pid)
        source = remote_dir / "mute.bin"
        source.write_bytes(os.urandom(300_000))
        got = transfers.get_file(conn, str(source), tmp_path / "mute.bin", remote_os="posix")
        assert got.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        assert (tmp_path / "mute.bin").read_bytes() == source.read_bytes()
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
        persist_wire.stop_helpers(tmp_path / "data")


class _FakeHelper:
    """A process-local stand-in at the helper's socket: it accepts each request (`A`), then, per
    `after`, hangs up (`dies`), says nothing more (`mute`), or says `S` and hangs up (`started`)."""

    def __init__(self, sock: Path, after: str) -> None:
        self.after = after
        self.requests: list[dict[str, Any]] = []
        self.kept: list[socket.socket] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with unixsock.sun_path(sock) as where:
            self.server.bind(where)
        sock.chmod(0o600)
        self.server.listen(8)
        self.server.settimeout(0.05)
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            client.settimeout(10)
            frame = persist_wire.recv_frame_fds(client)
            assert frame is not None
            for fd in frame[2]:
                os.close(fd)
            self.requests.append(json.loads(frame[1]))
            persist_wire.send_frame(client, b"A")
            if self.after == "started":
                persist_wire.send_frame(client, b"S")
            if self.after == "mute":
                self.kept.append(client)
            else:
                client.close()

    def close(self) -> None:
        self.closing.set()  # not close() under a blocked accept(): its fd number is reused
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.server.close()
        for client in self.kept:
            client.close()


@pytest.mark.parametrize("op", ["exec", "get"])
@pytest.mark.parametrize("after", ["dies", "mute"])
def test_a_helper_that_fails_before_starting_is_replaced_and_the_request_runs_once(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, remote_dir: Path, op: str, after: str
) -> None:
    cfg = live_sshd.config(known_hosts, connect_timeout=1, keepalive_interval=1)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    fake = _FakeHelper(conn.sock, after)
    try:
        started = time.monotonic()
        if op == "exec":
            marker = remote_dir / "ran"
            outcome = conn.exec(f"echo x >> {marker}; echo ran", timeout=20)
            assert (outcome.stdout, outcome.exit_status) == (b"ran\n", 0)
            assert marker.read_text() == "x\n"  # once
        else:
            source = remote_dir / "once.bin"
            source.write_bytes(os.urandom(200_000))
            got = transfers.get_file(conn, str(source), tmp_path / "once.bin", remote_os="posix")
            assert (tmp_path / "once.bin").read_bytes() == source.read_bytes()
            assert got.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        assert time.monotonic() - started < 20
        assert [r["op"] for r in fake.requests] == [op]  # then the fresh helper took it
        assert persist_wire.helpers(tmp_path / "data")[0]["alive"]
    finally:
        fake.close()
        persist_wire.stop_helpers(tmp_path / "data")


def test_a_helper_that_fails_after_starting_is_not_sent_the_command_again(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    cfg = live_sshd.config(known_hosts, connect_timeout=1, keepalive_interval=1)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    fake = _FakeHelper(conn.sock, "started")
    try:
        with pytest.raises(ConnectError, match=r"died while the command ran .*not retried"):
            conn.exec("echo once", timeout=20)
        assert [r["command"] for r in fake.requests] == ["echo once"]
        # none started for a second try: only the stand-in's socket is there
        assert [h["alive"] for h in persist_wire.helpers(tmp_path / "data")] == [False]
    finally:
        fake.close()


def test_a_request_cut_short_as_its_helper_leaves_says_the_helper_left(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """Its socket removed, the helper closes its connection under a running command: the caller
    is told the helper left (the VM did nothing), not that the connection was lost."""
    cfg = live_sshd.config(known_hosts)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 30)
    helper = persist_helper.Helper(cfg, conn.sock, 30)
    server = helper.listen()
    serving = threading.Thread(target=helper.run, args=(server,), daemon=True)
    serving.start()
    try:
        threading.Timer(1.0, conn.sock.unlink).start()  # mid-command
        with pytest.raises(ConnectError) as left:
            conn.exec("echo started; sleep 20", timeout=30, keep=False, on_stdout=lambda _: None)
        assert str(left.value) == (
            f"the warm-connection helper for {cfg.vm_key} left (its socket was removed or replaced): the"
            f" connection to {cfg.user}@{cfg.vm_key} was lost while the command ran (it may or may not have"
            " finished; not retried)"
        )
        serving.join(10)
        assert not serving.is_alive()
    finally:
        helper.stop.set()
        helper.conn.close()
