"""The warm CLI process (win_automation.cli.launch + cli.server): real launcher processes, a real
server, the real sshd. A call through the server must behave as the same call in-process: output,
exit code, stdin, environment, working directory, signals; and its faults (paused, killed, socket
removed or foreign, racing starters, changed sources, a caller killed mid-job) never run a
command twice and never leave a job `running`."""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from stat import S_IFCHR, S_ISCHR, S_ISFIFO
from typing import Any

import pytest
from fixture_sshd import SshServer

from win_automation import unixsock
from win_automation.cli import launch, server_files

MARK = "import time:"  # -X importtime lines: the launcher's own imports, told apart from the output


IN_PROCESS = "import sys; from win_automation.cli.app import main; main()"  # the entry point before


def launcher(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    *,
    input: bytes | None = None,
    timeout: float = 60,
    here: bool = False,
    stdout: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """`python -X importtime -m win_automation ARGS` (the launcher), its import lines kept apart;
    with `here`, the CLI run in-process as before the launcher; `stdout`: where its output goes."""
    entry = ["-c", IN_PROCESS] if here else ["-m", "win_automation"]
    return subprocess.run(
        [sys.executable, "-X", "importtime", *entry, *args],
        env=env,
        cwd=cwd,
        input=input,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )


def split(stderr: bytes) -> tuple[bytes, bool]:
    """(stderr without the import lines, whether the CLI ran in the launcher's own process)."""
    lines = stderr.splitlines(keepends=True)
    imports = b"".join(line for line in lines if line.startswith(MARK.encode()))
    return b"".join(line for line in lines if not line.startswith(MARK.encode())), b" typer" in imports


def sock_for(env: dict[str, str]) -> Path:
    """The socket the launcher looks for: computed by a fresh interpreter, as the key covers its
    flags and module path (pytest's differ)."""
    code = "from win_automation.cli import launch; print(launch.socket_path())"
    out = subprocess.run(  # from /: the package found as the CLI finds it, not in pytest's folder
        [sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


STARTED: list[subprocess.Popen[bytes]] = []


def start_server(
    env: dict[str, str], persist: float = 60, *flags: str, serving: bool = True
) -> subprocess.Popen[bytes]:
    """A warm CLI process for `env`'s data dir, as a job command starts it; returns when it serves
    (or at once, without `serving`)."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation.cli.server", str(sock), str(persist), *flags],
        env=env,
        cwd=sock.parent,  # as a job command starts it: `-m` puts this folder first on the module path
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    STARTED.append(proc)
    if serving:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 30)
        assert sock.exists(), proc.poll()
    return proc


@pytest.fixture
def cli_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The suite's clean environment, with the warm CLI process on (conftest turns it off)."""
    return {k: v for k, v in cli_env.items() if k != "WIN_AUTOMATION_CLI_SERVER"}


@pytest.fixture(autouse=True)
def servers_end_with_the_test() -> Any:
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def servers_of(env: dict[str, str]) -> list[int]:
    """Pids of warm CLI processes (not their children) of `env`'s data dir."""
    return list(unixsock.processes(launch.server_dir(env), server_files.MODULE))


def children_of(pid: int) -> list[int]:
    """The server's children that run a call: not its spare (which waits for the next call
    in the server's working folder, /; a call's child works in its caller's)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and os.readlink(stat.parent / "cwd") != "/":
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.fixture
def env(cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path) -> dict[str, str]:
    return {**cli_env, **live_sshd.env(known_hosts)}


def jobs(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    out = launcher(["jobs", "list", "--json"], {**env, "WIN_AUTOMATION_SSH_PERSIST": "0"}, cwd)
    return list(json.loads(out.stdout))


# --- the same as in-process -----------------------------------------------------------------------
CASES = [
    ["ssh", "run", "--shell", "cmd", "--", "echo hi"],
    ["ssh", "run", "--shell", "cmd", "--", "echo out; echo err >&2; exit 3"],
    ["config", "show"],
    ["config", "show", "--json"],
    ["jobs", "list"],
    ["ssh", "run", "--shell", "bogus", "--", "x"],  # usage error, exit 2
    ["--bogus"],  # typer's own usage error, exit 2
    ["jobs", "show", "nope"],
    ["--help"],
    ["ssh", "run", "--help"],
    ["--version"],
]


def test_calls_through_the_server_match_in_process_byte_for_byte(env: dict[str, str], tmp_path: Path) -> None:
    start_server(env)
    for args in CASES:
        here = launcher(args, env, tmp_path, here=True)
        served = launcher(args, env, tmp_path)
        here_err, ran_here = split(here.stderr)
        served_err, served_here = split(served.stderr)
        assert ran_here and not served_here, args  # the second one did run in the server's child
        assert (served.returncode, served.stdout, served_err) == (here.returncode, here.stdout, here_err), (
            args
        )
    codes = {tuple(a): launcher(a, env, tmp_path).returncode for a in CASES[:2] + CASES[5:8]}
    assert list(codes.values()) == [0, 3, 2, 2, 2]


@pytest.mark.parametrize("entry", ["-m win_automation", "the installed command"])
def test_the_launcher_imports_only_start_up_modules(env: dict[str, str], tmp_path: Path, entry: str) -> None:
    start_server(env)
    if entry == "-m win_automation":
        out = launcher(["--version"], env, tmp_path)
    else:  # the file in the venv's bin/ that users run (not pip's entry-point wrapper: it imports re)
        command = str(Path(sys.executable).with_name("win-automation"))
        out = subprocess.run(
            [sys.executable, "-X", "importtime", command, "--version"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
        )
    assert out.returncode == 0 and out.stdout.startswith(b"win-automation ")
    assert not split(out.stderr)[1]  # served by the warm CLI process
    names = {
        line.decode().rsplit("|", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith(MARK.encode())
    }
    ours = {name for name in names if name.startswith(("win_automation", "workflows"))}
    assert ours == {
        "win_automation",
        "win_automation.cli",
        "win_automation.cli.launch",
        "win_automation.cli.server_key",
        "win_automation.unixsock",
    }
    heavy = {
        "typer",
        "click",
        "pydantic",
        "rich",
        "json",
        "socket",
        "typing",
        "enum",
        "re",
        "pathlib",
        "signal",
    }
    assert not names & heavy, names & heavy


def test_a_one_line_error_exit_74_is_the_same(env: dict[str, str], tmp_path: Path) -> None:
    data = Path(env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    start_server(env)
    here = launcher(["jobs", "list"], env, tmp_path, here=True)
    served = launcher(["jobs", "list"], env, tmp_path)
    assert here.returncode == served.returncode == 74
    assert split(served.stderr) == (split(here.stderr)[0], False)
    assert split(served.stderr)[0].count(b"\n") == 1 and b"is corrupt" in served.stderr


def test_unwritable_output_is_one_line_and_the_same_served(env: dict[str, str], tmp_path: Path) -> None:
    """stdout on a full disk (/dev/full): one line, exit 74 (it was a traceback, in-process too);
    a closed pipe (`| head -c1` gone): exit 1, silent, as click has it. Served as in-process."""
    start_server(env)
    for args in (["--version"], ["jobs", "list", "--json"]):
        with open("/dev/full", "wb") as full:
            full_disk = [launcher(args, env, tmp_path, here=here, stdout=full) for here in (True, False)]
        assert [(out.returncode, *split(out.stderr)) for out in full_disk] == [
            (74, b"error: cannot write the output: No space left on device\n", True),
            (74, b"error: cannot write the output: No space left on device\n", False),
        ], args
        read, write = os.pipe()
        os.close(read)
        try:
            closed = [launcher(args, env, tmp_path, here=here, stdout=write) for here in (True, False)]
        finally:
            os.close(write)
        assert [(c.returncode, *split(c.stderr)) for c in closed] == [(1, b"", True), (1, b"", False)], args


def test_a_file_named_by_a_descriptor_is_the_callers(env: dict[str, str], tmp_path: Path) -> None:
    """`--config /dev/fd/N` (`3<file`, or `<(...)` for a FIFO): the server's child has only the
    caller's fds 0/1/2, where N is another file or none; so such a call runs in the launcher."""
    start_server(env)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"ssh": {"command_timeout": "42s"}}))
    fd = os.open(config, os.O_RDONLY)
    try:
        args = ["--config", f"/dev/fd/{fd}", "config", "show", "--json"]
        here, served = (
            subprocess.run(
                [sys.executable, "-X", "importtime", *entry, *args],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                timeout=60,
                pass_fds=(fd,),
            )
            for entry in (["-c", IN_PROCESS], ["-m", "win_automation"])
        )
    finally:
        os.close(fd)
    assert here.returncode == served.returncode == 0, served.stderr
    settings = {s["key"]: s for s in json.loads(served.stdout)["settings"]}
    assert served.stdout == here.stdout and settings["ssh.command_timeout"]["value"] == 42
    assert split(served.stderr) == (b"", True)  # run in the launcher
    assert not split(launcher(["config", "show"], env, tmp_path).stderr)[1]  # others are served


def test_per_call_environment_cwd_and_stdin(env: dict[str, str], tmp_path: Path) -> None:
    start_server(env)
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.json").write_text(json.dumps({"ssh": {"command_timeout": "42s"}}))
    out = launcher(
        ["--config", "c.json", "config", "show", "--json"],
        {**env, "WIN_AUTOMATION_SSH_USER": "per-call"},
        work,
    )
    assert out.returncode == 0 and not split(out.stderr)[1], out.stderr
    shown = json.loads(out.stdout)
    flat = json.dumps(shown)
    assert "per-call" in flat and "42" in flat
    # The next call, another environment and folder: nothing of the first one stays.
    again = launcher(["config", "show", "--json"], env, tmp_path)
    assert "per-call" not in again.stdout.decode() and "42.0" not in again.stdout.decode()
    # stdin is the caller's: a terminal for `ssh trust`'s question, answered there.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "trust"],
        env=env,
        cwd=tmp_path,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    os.write(master, b"n\n")
    stdout, stderr = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 2 and b"error: not trusted" in stderr, stderr
    assert b"presents" in stdout
    piped = launcher(["ssh", "trust"], env, tmp_path, input=b"y\n")  # not a terminal: refused
    assert piped.returncode == 2 and b"not a terminal" in piped.stderr


def test_a_server_that_leaves_leaves_no_files(env: dict[str, str], tmp_path: Path) -> None:
    """Idle past ssh.persist, or stopped: its socket, info, lock and log go (one set per code
    version would pile up otherwise)."""
    quick = {**env, "WIN_AUTOMATION_SSH_PERSIST": "1s"}
    assert launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], quick, tmp_path).returncode == 0
    folder = sock_for(env).parent
    files = {".sock", ".json", ".lock", ".log"}  # listening, recorded, its start-up lock, its stderr
    assert wait_for(lambda: {p.suffix for p in folder.iterdir()} == files, 30), list(folder.iterdir())
    assert servers_of(env)
    assert wait_for(lambda: not servers_of(env), 30), "the server did not leave when idle"
    assert wait_for(lambda: not list(folder.iterdir()), 5), list(folder.iterdir())
    start_server(env)
    assert launcher(["ssh", "persist", "stop"], env, tmp_path).returncode == 0
    assert wait_for(lambda: not servers_of(env) and not list(folder.iterdir()), 10), list(folder.iterdir())


def test_ssh_get_starts_the_server_and_is_served_next_time(
    env: dict[str, str], tmp_path: Path, remote_dir: Path
) -> None:
    data = os.urandom(3 << 20)
    (remote_dir / "blob.bin").write_bytes(data)
    first = launcher(["ssh", "get", str(remote_dir / "blob.bin"), "one.bin"], env, tmp_path)
    assert first.returncode == 0 and split(first.stderr)[1], first.stderr  # in-process: none yet
    assert wait_for(lambda: sock_for(env).exists() and servers_of(env), 30), "ssh get started no server"
    second = launcher(["ssh", "get", "--json", str(remote_dir / "blob.bin"), "two.bin"], env, tmp_path)
    assert second.returncode == 0 and not split(second.stderr)[1], second.stderr  # served
    assert json.loads(second.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "two.bin").read_bytes() == data == (tmp_path / "one.bin").read_bytes()


def test_a_cold_call_starts_the_helper_and_server_without_a_resource_warning(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A cold job command starts the SSH helper and the warm CLI process as it exits, without
    waiting for them. Their Popen objects, collected at its exit, said `ResourceWarning:
    subprocess N is still running` under `-X dev` or PYTHONWARNINGS (a traceback with `error`)."""
    strict = {**env, "PYTHONWARNINGS": "error"}
    cold = launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], strict, tmp_path)
    assert (cold.returncode, cold.stdout, split(cold.stderr)) == (0, b"hi\n", (b"", True))
    assert wait_for(lambda: sock_for(strict).exists() and servers_of(strict), 30), "no server started"

    def helpers() -> list[Any]:
        status = launcher(["ssh", "persist", "status", "--json"], strict, tmp_path)
        return [h for h in json.loads(status.stdout)["helpers"] if h["alive"]]

    assert wait_for(helpers, 30), "no helper started"
    warm = launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], strict, tmp_path)
    assert (warm.returncode, warm.stdout, split(warm.stderr)) == (0, b"hi\n", (b"", False))


def test_a_served_get_into_a_fifo_or_device_is_refused_as_in_process(
    env: dict[str, str], tmp_path: Path, remote_dir: Path
) -> None:
    """The download's part file would be renamed over the node (as root, over /dev/null)."""
    (remote_dir / "f.txt").write_text("payload")
    assert launcher(["ssh", "get", str(remote_dir / "f.txt"), "warm.txt"], env, tmp_path).returncode == 0
    assert wait_for(lambda: sock_for(env).exists() and servers_of(env), 30), "ssh get started no server"
    fifo, device = tmp_path / "fifo", tmp_path / "null"
    os.mkfifo(fifo)
    os.mknod(device, S_IFCHR | 0o666, os.makedev(1, 3))
    for target, what in ((fifo, "a FIFO"), (device, "a character device")):
        served = launcher(["ssh", "get", str(remote_dir / "f.txt"), str(target)], env, tmp_path, timeout=20)
        stderr, here = split(served.stderr)
        assert served.returncode == 1 and not here, stderr
        assert stderr == f"error: local path {target} is not a regular file ({what})\n".encode()
    assert S_ISFIFO(os.stat(fifo).st_mode) and S_ISCHR(os.stat(device).st_mode)
    assert not [p for p in os.listdir(tmp_path) if ".wa-part-" in p]


def test_a_served_job_imports_neither_paramiko_nor_hatchet(env: dict[str, str], tmp_path: Path) -> None:
    assert launcher(["ssh", "run", "--shell", "cmd", "--", "echo warm-up"], env, tmp_path).returncode == 0
    # listening: it has imported what it preloads (CI: a loaded machine took over 1 s)
    assert wait_for(lambda: sock_for(env).exists() and servers_of(env), 30), (
        "the job command started no server"
    )
    (server,) = servers_of(env)
    maps = Path(f"/proc/{server}/maps").read_text()
    assert "paramiko" not in maps and "_rust" not in maps and "grpc" not in maps
    # A long command: look at the child that runs it (helper warm: no paramiko needed).
    time.sleep(1)  # the SSH helper started by the first call is up
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", "sleep 2; echo done"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert wait_for(lambda: children_of(server), 10)
    (child,) = children_of(server)
    time.sleep(1)
    modules = Path(f"/proc/{child}/maps").read_text()
    assert "_rust" not in modules and "cygrpc" not in modules  # cryptography (paramiko), grpc (Hatchet)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and stdout == b"done\n"


# --- signals ------------------------------------------------------------------------------------
def _running_job(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    server = start_server(env).pid
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
            "echo started; sleep 30",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as from a terminal, also when the suite runs with SIGINT ignored (`cmd &`)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    (child,) = children_of(server)
    return proc, server, child


def test_ctrl_c_interrupts_the_job_with_130(env: dict[str, str], tmp_path: Path) -> None:
    proc, _server, _child = _running_job(env, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    (job,) = jobs(env, tmp_path)
    assert job["state"] == "interrupted"


def test_a_killed_caller_stops_its_child_and_the_job_is_not_left_running(
    env: dict[str, str], tmp_path: Path
) -> None:
    proc, _server, child = _running_job(env, tmp_path)
    proc.kill()
    proc.communicate()
    assert wait_for(lambda: _gone(child), 15)
    (job,) = jobs(env, tmp_path)
    assert job["state"] == "interrupted", job


def test_a_stopped_child_takes_ctrl_c_and_does_not_outlive_its_caller(
    env: dict[str, str], tmp_path: Path
) -> None:
    """SIGSTOP of the served child: Ctrl-C still interrupts the job (the launcher continues the
    child as it forwards the signal), and a caller killed meanwhile leaves neither a stopped
    child nor a job `running` (the server continues the child, which then ends as any whose
    caller was killed)."""
    proc, server, child = _running_job(env, tmp_path)
    os.kill(child, signal.SIGSTOP)
    assert wait_for(lambda: _state(child) == "T", 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    again = ["ssh", "run", "--shell", "cmd", "--", "echo again; sleep 30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", *again],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"again\n"
    (child,) = children_of(server)
    os.kill(child, signal.SIGSTOP)
    assert wait_for(lambda: _state(child) == "T", 10)
    proc.kill()
    proc.communicate()
    assert wait_for(lambda: _gone(child), 15)
    assert [job["state"] for job in jobs(env, tmp_path)] == ["interrupted", "interrupted"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _gone(pid: int) -> bool:
    """True once `pid` has exited (reaped, or a zombie)."""
    try:
        return _state(pid) == "Z"
    except OSError:
        return True


RIGHT_AFTER_GO = """
import os, signal, sys
from win_automation.cli import launch
sys.argv = ["win-automation", *sys.argv[1:]]
conn, child = launch._connect(launch.socket_path())
print(child, flush=True)
os.kill(os.getpid(), signal.SIGTSTP)  # Ctrl-Z as "go" has just gone: before _wait forwards it
os._exit(launch._wait(conn, child))
"""


def test_a_ctrl_z_right_after_go_stops_the_child_too(env: dict[str, str], tmp_path: Path) -> None:
    """A Ctrl-Z between the launcher's "go" and its forwarding of signals stopped only the
    launcher: the call ran on in the child, and the job could not be stopped or resumed with it."""
    start_server(env)
    command = ["ssh", "run", "--shell", "cmd", "--", "echo a; sleep 1; echo b"]
    with subprocess.Popen(
        [sys.executable, "-c", RIGHT_AFTER_GO, *command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        process_group=0,  # a shell's job: not orphaned, so Ctrl-Z stops it
    ) as proc:
        assert proc.stdout is not None
        try:
            child = int(proc.stdout.readline())
            assert wait_for(lambda: _state(proc.pid) == "T", 10)
            assert wait_for(lambda: _state(child) == "T", 10)  # held, then forwarded: stopped with it
            time.sleep(1.5)
            assert _state(child) == "T"
        except BaseException:
            proc.kill()  # stopped: it would never end
            raise
        proc.send_signal(signal.SIGCONT)
        assert proc.stdout.read() == b"a\nb\n"
    assert proc.returncode == 0


def test_ctrl_z_stops_the_child_with_the_caller_and_fg_continues_both(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The caller in a process group of its own (not orphaned: its parent is in another group of
    the session), as a shell's job: there Ctrl-Z stops."""
    server = start_server(env).pid
    command = ["ssh", "run", "--shell", "cmd", "--", "echo a; sleep 2; echo b"]
    with subprocess.Popen(
        [sys.executable, "-m", "win_automation", *command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        process_group=0,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"a\n"
        (child,) = children_of(server)
        proc.send_signal(signal.SIGTSTP)
        stopped = wait_for(lambda: _state(child) == "T" and _state(proc.pid) == "T", 10)
        proc.send_signal(signal.SIGCONT)
        assert stopped
        assert wait_for(lambda: _state(child) != "T", 10)
        stdout = proc.stdout.read()
    assert proc.returncode == 0 and stdout == b"b\n"


# --- faults -------------------------------------------------------------------------------------
def test_a_paused_server_falls_back_within_a_second_and_runs_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(env)
    sock = sock_for(env)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo once"], env, tmp_path)
        elapsed = time.monotonic() - started
        assert out.returncode == 0 and out.stdout == b"once\n", out.stderr
        assert split(out.stderr)[1]  # ran in the launcher's process
        assert elapsed < 1.0 + 5  # the 1 s handshake bound plus an in-process job on a busy machine
        assert not sock.exists()  # dropped: a new server is started by the job command
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert server.wait(15) == 0  # it found its socket gone and left, running nothing
    assert [j["state"] for j in jobs(env, tmp_path)] == ["succeeded"]  # exactly once
    assert wait_for(lambda: sock.exists(), 30)  # the fallback call started a new one


def test_ctrl_c_while_a_paused_server_is_waited_for_ends_the_call_without_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The launcher waits up to a second for a server's answer; a Ctrl-C then was Python's
    traceback of KeyboardInterrupt (19 lines)."""
    server = start_server(env)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "win_automation", "jobs", "list"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
        )
        time.sleep(0.4)  # waiting for the paused server (its bound: 1 s)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert (proc.returncode, out, err) == (-signal.SIGINT, b"", b"")
    finally:
        os.kill(server.pid, signal.SIGCONT)


def spares_of(pid: int) -> list[int]:
    """The server's spare: its child that waits for the next call in the server's folder, /."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z" and os.readlink(stat.parent / "cwd") == "/":
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_the_spare_takes_the_call_and_the_next_waits_after_it(env: dict[str, str], tmp_path: Path) -> None:
    server = start_server(env).pid
    assert wait_for(lambda: spares_of(server), 10)
    (spare,) = spares_of(server)
    command = ["ssh", "run", "--shell", "cmd", "--", "echo a; sleep 1; echo b"]
    with subprocess.Popen(
        [sys.executable, "-m", "win_automation", *command], env=env, cwd=tmp_path, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"a\n"
        assert children_of(server) == [spare]  # the call runs in the spare
        assert spares_of(server) == []  # none is forked while a call runs (it would slow it)
        assert proc.stdout.read() == b"b\n"
    assert proc.returncode == 0
    assert wait_for(lambda: spares_of(server), 10)  # the next call's
    assert spare not in spares_of(server)


def test_a_killed_or_paused_spare_is_replaced_and_the_call_served(
    env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(env).pid
    assert wait_for(lambda: spares_of(server), 10)
    (killed,) = spares_of(server)
    os.kill(killed, signal.SIGKILL)
    assert wait_for(lambda: not Path(f"/proc/{killed}").exists(), 10)  # reaped while idle: no zombie
    # Not forked again at once: a spare that cannot live (no /proc, a crash) would be forked
    # for ever. The next call gets a child of its own, and a spare is forked after it.
    assert not wait_for(lambda: spares_of(server), 2)
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and not split(out.stderr)[1], out.stderr  # served
    assert wait_for(lambda: spares_of(server) and killed not in spares_of(server), 10)
    (paused,) = spares_of(server)
    os.kill(paused, signal.SIGSTOP)
    started = time.monotonic()
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and not split(out.stderr)[1], out.stderr  # served, not by it
    assert time.monotonic() - started < launch.CONNECT_TIMEOUT + 2
    assert wait_for(lambda: not Path(f"/proc/{paused}").exists(), 10)  # killed and reaped


def test_a_child_killed_while_its_server_is_paused_does_not_hold_its_caller(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The server tells a caller how its child died (a signal); paused, it could not, and held the
    caller's connection open: the caller waited for as long as the server stayed paused. Now it
    ends (exit 1, one line) once its child has been dead a few seconds without a word."""
    server = start_server(env).pid
    command = ["ssh", "run", "--shell", "cmd", "--", "echo started; sleep 60"]
    with subprocess.Popen(
        [sys.executable, "-m", "win_automation", *command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        (child,) = children_of(server)
        os.kill(server, signal.SIGSTOP)
        try:
            os.kill(child, signal.SIGKILL)
            _, stderr = proc.communicate(timeout=25)  # ORPHAN_GRACE 5 s, and a busy machine
        finally:
            os.kill(server, signal.SIGCONT)
    assert proc.returncode == 1
    assert stderr == b"error: the warm CLI process ended without an exit status\n"
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and not split(out.stderr)[1]  # the server, continued, serves


def test_a_server_that_leaves_takes_its_spare(env: dict[str, str], tmp_path: Path) -> None:
    server = start_server(env)
    assert wait_for(lambda: spares_of(server.pid), 10)
    (spare,) = spares_of(server.pid)
    server.terminate()  # as `ssh persist stop` does
    assert server.wait(10) == 0
    assert not Path(f"/proc/{spare}").exists()  # killed and reaped before the server left


def test_stop_ends_a_paused_server(env: dict[str, str], tmp_path: Path) -> None:
    """`ssh persist stop` on a paused server: its own call drops the server's socket (no answer
    within 1 s) and runs in-process; the paused process is still stopped, not left for good."""
    server = start_server(env)
    os.kill(server.pid, signal.SIGSTOP)
    out = launcher(["ssh", "persist", "stop", "--json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert [s["pid"] for s in json.loads(out.stdout)["cli_servers_stopped"]] == [server.pid]
    assert server.wait(10) == 0  # it took the SIGTERM (continued) and left


def test_stop_ends_a_server_that_is_still_starting(env: dict[str, str], tmp_path: Path) -> None:
    """A job command starts the server as it exits; `ssh persist stop --all` right after (a
    script's clean-up) ran before the server had recorded itself, which then served for
    ssh.persist. Here the server waits for its starter (this test) to exit: still starting."""
    sock = sock_for(env)
    server = start_server(
        env, 60, "--after-parent", str(os.getpid()), serving=False
    )  # waits for this test to exit
    assert wait_for(lambda: server.pid in servers_of(env), 10)
    out = launcher(["ssh", "persist", "stop", "--all", "--json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert [s["pid"] for s in json.loads(out.stdout)["cli_servers_stopped"]] == [server.pid]
    assert server.wait(10) == -signal.SIGTERM
    assert not sock.exists() and servers_of(env) == []


@pytest.mark.parametrize("fault", ["killed", "socket removed"])
def test_a_dead_server_falls_back_and_a_new_one_serves_later(
    env: dict[str, str], tmp_path: Path, fault: str
) -> None:
    server = start_server(env)
    sock = sock_for(env)
    if fault == "killed":
        server.kill()
    else:
        sock.unlink()
        assert server.wait(10) == 0
    out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo again"], env, tmp_path)
    assert out.returncode == 0 and out.stdout == b"again\n" and split(out.stderr)[1]
    log = Path(server_files.log_path(str(sock)))
    assert wait_for(lambda: sock.exists() and servers_of(env), 30), (
        log.read_text() if log.exists() else "no log",
        subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True, text=True).stdout[-3000:],
    )
    served = launcher(["ssh", "run", "--shell", "cmd", "--", "echo later"], env, tmp_path)
    assert served.stdout == b"later\n" and not split(served.stderr)[1]


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_a_socket_that_drops_the_request_is_removed_and_a_new_server_serves_later(
    env: dict[str, str], tmp_path: Path, how: str
) -> None:
    """A socket whose connection ends before a child's pid: a server that died while its spare
    child still held the listener (the spare closes it: the call is reset), or one that leaves.
    The call runs in-process, once; the socket goes, so that the call starts a new server."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unixsock.sun_path(sock) as where:
        listener.bind(where)
    sock.chmod(0o600)
    listener.listen(1)
    dead = sock.stat().st_ino

    def drop() -> None:
        select.select([listener], [], [], 30)  # a call waits in the backlog
        if how == "closed":
            conn, _ = listener.accept()
            conn.recv(1)
            conn.close()
        listener.close()  # "reset": with the call still in its backlog

    threading.Thread(target=drop, daemon=True).start()
    out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo again"], env, tmp_path)
    assert out.returncode == 0 and out.stdout == b"again\n" and split(out.stderr)[1], out.stderr
    log = Path(server_files.log_path(str(sock)))
    assert wait_for(lambda: sock.exists() and sock.stat().st_ino != dead and servers_of(env), 30), (
        log.read_text() if log.exists() else "no log"
    )
    served = launcher(["ssh", "run", "--shell", "cmd", "--", "echo later"], env, tmp_path)
    assert served.stdout == b"later\n" and not split(served.stderr)[1]
    assert [j["state"] for j in jobs(env, tmp_path)] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("fault", ["mode 0644", "foreign owner", "a folder", "a file", "a fifo"])
def test_a_foreign_or_open_socket_or_none_is_never_connected_to_and_said_in_one_line(
    env: dict[str, str], tmp_path: Path, fault: str
) -> None:
    """What sits at the warm CLI process's socket path and is not its socket (another user's, one
    others may open, a leftover folder, file or FIFO) gets no request (argv, environment, fds):
    each call runs in-process after one warning line; `--version` and `ssh persist` still work."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if fault in ("mode 0644", "foreign owner"):
        with unixsock.sun_path(sock) as where:  # a deep tmp_path (pytest-xdist's) passes sun_path's 108
            listener.bind(where)
        listener.listen(1)
        listener.settimeout(0)
        if fault == "mode 0644":
            sock.chmod(0o644)
        else:
            sock.chmod(0o600)
            os.chown(sock, 65534, 65534)
    elif fault == "a folder":
        sock.mkdir()
    elif fault == "a file":
        sock.write_bytes(b"x")
    else:
        os.mkfifo(sock)
    why = {
        "mode 0644": "mode 0644, not 0600",
        "foreign owner": "owned by uid 65534",
        "a folder": "not a socket",
        "a file": "not a socket",
        "a fifo": "not a socket",
    }[fault]
    try:
        for argv in (["config", "show", "--json"], ["--version"], ["ssh", "persist", "status", "--json"]):
            out = launcher(argv, env, tmp_path)
            stderr = split(out.stderr)[0]
            assert out.returncode == 0 and out.stdout, (argv, out.stderr)
            text = stderr.decode()
            assert text.count("\n") == 1 and text.startswith(f"warning: ssh.persist: refusing {sock}: {why}")
            assert text.endswith("this call runs without the warm CLI process\n")
        if fault in ("mode 0644", "foreign owner"):
            with pytest.raises(BlockingIOError):
                listener.accept()  # never connected to
    finally:
        listener.close()
    off = launcher(["config", "show"], {**env, "WIN_AUTOMATION_SSH_PERSIST": "0"}, tmp_path)
    assert off.returncode == 0 and not split(off.stderr)[0]  # the way out the message names


def test_a_peer_of_another_uid_gets_nothing(cli_env: dict[str, str], tmp_path: Path) -> None:
    """SO_PEERCRED: even through a socket opened up to everyone, another user's request is closed
    unanswered, and nothing is forked for it."""
    shared = Path(tempfile.mkdtemp(prefix="wa-peer-"))
    shared.chmod(0o755)
    env = {**cli_env, "WIN_AUTOMATION_DATA_DIR": str(shared / "data")}
    server = start_server(env)
    sock = sock_for(env)
    for folder in (shared / "data", sock.parent):
        folder.chmod(0o755)
    sock.chmod(0o666)
    client = (
        "import socket, sys\n"
        "c = socket.socket(socket.AF_UNIX)\n"
        "c.connect(sys.argv[1])\n"
        "spec = b'utf-8:strict:0:0'\n"
        "body = bytes(1).join([b'WA1', b'0', b'', spec, spec, spec, b'1', b'x'])\n"
        "c.settimeout(5)\n"
        "try:\n"
        "    c.sendall(len(body).to_bytes(4, 'big') + body)\n"
        "    print('closed' if c.recv(100) == b'' else 'answered')\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print('closed')\n"
    )
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            client,
            str(sock),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.strip() == "closed", out.stdout + out.stderr
    assert server.poll() is None and children_of(server.pid) == []
    server.kill()
    server.wait()
    shutil.rmtree(shared)


def test_a_caller_with_other_credentials_is_never_served_by_this_server(
    env: dict[str, str], tmp_path: Path, remote_dir: Path
) -> None:
    """A forked child keeps the server's capabilities, limits, groups and namespaces. A caller
    whose differ (root without CAP_DAC_OVERRIDE, as `setpriv` or a restricted service runs it; a
    lower `ulimit`) must not get them: it is not served by this server, so a folder it may not
    write stays refused as in-process."""
    import resource

    from unprivileged import prefix

    start_server(env)
    (remote_dir / "f.txt").write_text("data")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = ["ssh", "get", str(remote_dir / "f.txt"), str(locked / "f.txt")]
    here = launcher(args, env, tmp_path, here=True)
    restricted = subprocess.run(
        [*prefix(), sys.executable, "-X", "importtime", "-m", "win_automation", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    if os.geteuid() == 0:  # the test's root ignores the mode: so would the server's child
        assert here.returncode == 0 and (locked / "f.txt").exists()
        (locked / "f.txt").unlink()
    expected = b"error: cannot write local path " + os.fsencode(locked / "f.txt") + b": Permission denied\n"
    assert restricted.returncode == 1 and split(restricted.stderr) == (expected, True)
    assert list(locked.iterdir()) == []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limited = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "win_automation", "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512) - 1, hard)),
    )
    assert limited.returncode == 0 and split(limited.stderr)[1]  # in its own process
    assert not split(launcher(["--version"], env, tmp_path).stderr)[1]  # the same caller is served


def test_a_niced_or_pinned_caller_is_not_run_as_the_server(env: dict[str, str], tmp_path: Path) -> None:
    """A forked child runs at its server's nice value, scheduling policy and CPUs: `nice
    win-automation ...` or `taskset` ran the call at full priority on every CPU, unlike the same
    call in-process. They are part of the key, as the credentials are."""
    start_server(env)
    cpus = sorted(os.sched_getaffinity(0))
    for name, setup in (("nice", lambda: os.nice(5)), ("taskset", lambda: os.sched_setaffinity(0, cpus[:1]))):
        if name == "taskset" and len(cpus) < 2:
            continue  # one CPU: pinning changes nothing
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "win_automation", "--version"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            preexec_fn=setup,
        )
        assert out.returncode == 0 and split(out.stderr)[1], name  # in-process, not the server's
    assert not split(launcher(["--version"], env, tmp_path).stderr)[1]  # the others are served


def test_a_server_that_cannot_record_itself_leaves_no_socket_and_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Its info file cannot be written (here a folder in its place, which a job command now sees
    and starts no server for; a full disk alike): the server says so in one line and leaves no
    socket behind; the calls run in-process meanwhile."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    sock.with_suffix(".json").mkdir()
    server = subprocess.run(
        [sys.executable, "-m", "win_automation.cli.server", str(sock), "60"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    # naming the file that failed (it named only the socket, which was not at fault)
    info = sock.with_suffix(".json")
    expected = f"warm CLI process: cannot serve at {sock}: {info}: Is a directory\n"
    assert (server.returncode, server.stderr.decode()) == (1, expected)
    assert not sock.exists() and not servers_of(env)
    again = launcher(["--version"], env, tmp_path)
    assert again.returncode == 0 and split(again.stderr)[1]


def test_two_starters_at_once_give_one_server(env: dict[str, str], tmp_path: Path) -> None:
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    STARTED[:] = procs = [
        subprocess.Popen(
            [sys.executable, "-m", "win_automation.cli.server", str(sock), "60"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(3)
    ]
    assert wait_for(lambda: sock.exists(), 30)
    time.sleep(0.5)
    assert sum(p.poll() is None for p in procs) == 1 and len(servers_of(env)) == 1
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and not split(out.stderr)[1]


def own_sources(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path]:
    """`env` with a copy of the sources first on the module path, and the copy's cli folder: a
    test that changes the sources' mtimes changes only its own server's key (touching the
    installed ones changed the key of every server the other pytest-xdist workers' tests ran
    meanwhile, which then left in the middle of their calls)."""
    src = tmp_path / "src"
    for package in ("win_automation", "workflows"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(Path(launch.__file__).parents[2] / package, src / package, ignore=ignore)
    # Compiled, as pip installs a package: a server writing bytecode where there was none (no
    # PYTHONDONTWRITEBYTECODE) would add __pycache__ folders, change their parents' mtimes, and
    # find its own key stale (it then leaves, and the next job command starts another).
    assert compileall.compile_dir(src, quiet=1)
    return {**env, "PYTHONPATH": str(src)}, src / "win_automation" / "cli"


def test_changed_sources_get_a_new_server(env: dict[str, str], tmp_path: Path) -> None:
    env, cli = own_sources(env, tmp_path)
    old = start_server(env)
    old_sock = sock_for(env)
    module = cli / "parse.py"
    os.utime(module, ns=(module.stat().st_atime_ns, time.time_ns()))
    new_sock = sock_for(env)
    assert new_sock != old_sock
    out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo fresh"], env, tmp_path)
    assert out.stdout == b"fresh\n" and split(out.stderr)[1]  # not the old server: in-process
    assert old.wait(15) == 0  # the old one noticed and left
    assert wait_for(lambda: new_sock.exists(), 30)  # the job command started the new one


def test_modules_in_the_starting_folder_are_not_the_servers(env: dict[str, str], tmp_path: Path) -> None:
    """The installed command does not import from the working folder (its module path starts
    with its own folder); the server a job command starts there did (`-m` puts the folder
    first): a project's own `workflows` package ran in it, and as it has no `ssh_exec` the
    server died at every start, each call in-process."""
    project = tmp_path / "project"
    (project / "workflows").mkdir(parents=True)
    marker = tmp_path / "imported"
    (project / "workflows" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    command = [str(Path(sys.executable).with_name("win-automation")), "ssh", "run", "--shell", "cmd", "--"]
    first = subprocess.run([*command, "echo one"], env=env, cwd=project, capture_output=True, timeout=60)
    assert first.returncode == 0 and first.stdout == b"one\n", first.stderr
    assert wait_for(lambda: servers_of(env), 30), "the job command started no server"
    assert wait_for(lambda: sock_for(env).exists() or not servers_of(env), 30)
    second = subprocess.run(
        [sys.executable, "-X", "importtime", *command[:1], *command[1:], "echo two"],
        env=env,
        cwd=project,
        capture_output=True,
        timeout=60,
    )
    assert second.returncode == 0 and second.stdout == b"two\n", second.stderr
    assert not split(second.stderr)[1]  # served
    assert not marker.exists()


def test_an_edit_after_a_future_mtime_gets_a_new_server(env: dict[str, str], tmp_path: Path) -> None:
    """One module's mtime in the future (clock skew, an unpacked archive): it was the newest, so
    a later edit of another module (mtime now) left the key as it was, and the server served its
    old code."""
    env, cli = own_sources(env, tmp_path)
    future, edited = cli / "parse.py", cli / "output.py"
    os.utime(future, ns=(time.time_ns(), time.time_ns() + 86400 * 10**9))
    old = start_server(env)
    old_sock = sock_for(env)
    os.utime(edited, ns=(time.time_ns(), time.time_ns()))  # the edit
    assert sock_for(env) != old_sock
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and split(out.stderr)[1]  # not the old server: in-process
    assert old.wait(15) == 0  # the old one noticed and left


def test_an_upgraded_dependency_gets_a_new_server(env: dict[str, str], tmp_path: Path) -> None:
    """`pip install -U rich` while a server runs: a fresh process imports the new rich, the
    server holds the old one. pip adds and removes `.dist-info` folders in site-packages, which
    changes its mtime (the key's); here a folder added and removed as pip does, in a
    site-packages of this test's own on PYTHONPATH (the installed one's mtime is in the key of
    every other test's server)."""
    site = tmp_path / "site-packages"
    site.mkdir()
    os.utime(site, ns=(0, 0))
    env = {**env, "PYTHONPATH": str(site)}
    old = start_server(env)
    old_sock = sock_for(env)
    marker = site / "wa_upgrade_probe.dist-info"
    marker.mkdir()
    marker.rmdir()
    assert sock_for(env) != old_sock
    out = launcher(["--version"], env, tmp_path)
    assert out.returncode == 0 and split(out.stderr)[1]  # not the old server: in-process
    assert old.wait(15) == 0  # the old one noticed and left


def test_huge_output_streams_through_the_server(env: dict[str, str], tmp_path: Path) -> None:
    server = start_server(env).pid
    size = 200 * 1024 * 1024
    command = f"head -c {size} /dev/zero | tr '\\0' x"
    with subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        total, peak_child, peak_client = 0, 0, 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
            for pid in children_of(server):
                peak_child = max(peak_child, _rss_kib(pid))
            peak_client = max(peak_client, _rss_kib(proc.pid))
    assert proc.returncode == 0 and total == size
    assert 0 < peak_child < 150 * 1024 and peak_client < 30 * 1024, (peak_child, peak_client)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_persist_0_skips_the_server_and_status_stop_list_it(env: dict[str, str], tmp_path: Path) -> None:
    server = start_server(env)
    for variable, value in (("WIN_AUTOMATION_SSH_PERSIST", "0"), ("WIN_AUTOMATION_CLI_SERVER", "off")):
        off = launcher(["--version"], {**env, variable: value}, tmp_path)
        assert off.returncode == 0 and split(off.stderr)[1], variable
    status = launcher(["ssh", "persist", "status", "--json"], env, tmp_path)
    (found,) = json.loads(status.stdout)["cli_servers"]
    assert found["pid"] == server.pid and found["alive"] and found["current"]
    stopped = launcher(["ssh", "persist", "stop", "--json"], env, tmp_path)
    assert [s["pid"] for s in json.loads(stopped.stdout)["cli_servers_stopped"]] == [server.pid]
    assert server.wait(10) == 0 and not sock_for(env).exists()


def test_every_spelling_of_persist_0_skips_the_server(env: dict[str, str], tmp_path: Path) -> None:
    """The config reads `00`, `0.0s`, `000ms`, `0 s` as 0 (off); the launcher knew only a few
    spellings (`0`, `0s`, `0.0`...), and the others were served by the running server."""
    start_server(env)
    for value in ("00", "0.0s", "000ms", "0 s", "0.00"):
        off = launcher(["--version"], {**env, "WIN_AUTOMATION_SSH_PERSIST": value}, tmp_path)
        assert off.returncode == 0 and split(off.stderr)[1], value  # in-process
    on = launcher(["--version"], {**env, "WIN_AUTOMATION_SSH_PERSIST": "0.5s"}, tmp_path)
    assert on.returncode == 0 and not split(on.stderr)[1]  # served


def test_the_launchers_default_data_dir_is_the_configs() -> None:
    from win_automation.config.schema import DataConfig

    assert Path(os.path.expanduser(launch.DEFAULT_DATA_DIR)) == Path(DataConfig().dir).expanduser()
