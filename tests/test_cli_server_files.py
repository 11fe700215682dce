"""The warm CLI process's files beside its socket (win_automation.cli.server_files): a FIFO, a
huge file or a device in place of its info file or log blocks no command and no server, and
exhausts no memory. Real processes, real FIFOs, the real sshd for a job command."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

from test_cli_server import (  # the fixtures and helpers of the warm CLI process's tests
    STARTED,
    cli_env,
    env,
    launcher,
    servers_end_with_the_test,
    servers_of,
    sock_for,
    split,
    start_server,
    wait_for,
)

from win_automation import unixsock

__all__ = ["cli_env", "env", "servers_end_with_the_test"]  # fixtures, used by name


MEMORY_LIMIT = 768 << 20
"""The address space the CLI is given (RLIMIT_AS): room for its imports, not for a 1 GiB read.
(ru_maxrss cannot tell: a child forked from a large pytest worker starts at the worker's size.)"""


def _bounded(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, bytes]:
    """(exit status, stdout) of `python -m win_automation ARGS` in MEMORY_LIMIT; killed (-9)
    after 60 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)),
    )
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        out, _ = proc.communicate()
    finally:
        timer.cancel()
    return proc.returncode, out


def test_status_and_stop_neither_block_on_nor_read_whole_odd_info_files(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A FIFO nobody writes (blocked for good), 1 GiB (read whole: 2 GiB of memory), a symlink
    to /dev/zero (never ends) and 4 KiB of nested arrays (past the JSON parser's recursion: a
    traceback, and `stop` stopped nothing) as `<key>.json`: listed as unknown, in bounded time
    and memory."""
    folder = Path(cli_env["WIN_AUTOMATION_DATA_DIR"]) / "cli-server"
    folder.mkdir(parents=True, mode=0o700)
    os.mkfifo(folder / "a.json")
    with open(folder / "b.json", "wb") as huge:
        huge.truncate(1 << 30)
    (folder / "c.json").symlink_to("/dev/zero")
    (folder / "d.json").write_text(json.dumps({"pid": 1, "started": "x", "persist": 5.0}))
    (folder / "e.json").write_text("[" * 2000 + "]" * 2000)
    for args in (["ssh", "persist", "status", "--json"], ["ssh", "persist", "stop", "--json"]):
        code, out = _bounded(args, cli_env, tmp_path)
        assert code == 0, (args, code)  # -9: blocked, killed after 60 s; 1: out of memory
        listed = json.loads(out)["cli_servers" if args[2] == "status" else "cli_servers_stopped"]
        assert [(Path(s["socket"]).stem, s["pid"], s["persist_seconds"]) for s in listed] == [
            ("a", None, None),
            ("b", None, None),
            ("c", None, None),
            ("d", 1, 5.0),  # a regular one is read (pid 1 is no server: not stopped)
            ("e", None, None),
        ]


def test_a_fifo_info_file_does_not_wedge_the_starting_server(env: dict[str, str], tmp_path: Path) -> None:
    """The server writes its info file as it starts serving: into a FIFO nobody reads it blocked
    for good, holding the start-up lock (no other server could start) while its listening
    socket timed every launcher out. It replaces the file instead, and serves."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(sock.with_suffix(".json"))
    server = start_server(env)
    out = launcher(["--version"], env, tmp_path, timeout=30)
    assert out.returncode == 0 and not split(out.stderr)[1], out.stderr  # served, not fallen back
    info = json.loads(sock.with_suffix(".json").read_text())
    assert info["pid"] == server.pid


def test_a_fifo_log_does_not_hang_the_job_command_that_starts_the_server(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The job command that starts the server opens its log as it exits: a FIFO nobody reads
    blocked that open, and so the command's exit, for good. The server starts with its stderr
    on /dev/null instead."""
    quick = {**env, "WIN_AUTOMATION_SSH_PERSIST": "3s"}
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(sock.with_suffix(".log"))
    try:
        out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], quick, tmp_path, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the job command did not exit") from None
    assert out.returncode == 0 and out.stdout == b"hi\n"
    assert wait_for(lambda: sock.exists() and servers_of(env), 30)  # and the server started
    assert wait_for(lambda: not servers_of(env), 30)  # idle 3 s: it left
    assert not STARTED


def test_a_server_leaves_cleanly_when_its_info_file_became_a_folder(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Its files are removed as it leaves; one that cannot be (a folder in its place, a read-only
    folder) is left, without a traceback in its log and exit 1."""
    sock = sock_for(cli_env)
    sock.parent.mkdir(parents=True, mode=0o700)
    server = subprocess.Popen(
        [sys.executable, "-m", "win_automation.cli.server", str(sock), "60"],
        env=cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    STARTED.append(server)
    info = sock.with_suffix(".json")
    assert wait_for(lambda: info.exists() or server.poll() is not None, 30)
    info.unlink()
    info.mkdir()
    server.terminate()  # as `ssh persist stop` does
    _, stderr = server.communicate(timeout=15)
    assert (server.returncode, stderr) == (0, b"")
    assert info.is_dir() and not sock.exists()


def test_a_folder_as_the_start_up_lock_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    sock = sock_for(cli_env)
    sock.parent.mkdir(parents=True, mode=0o700)
    sock.with_suffix(".lock").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "win_automation.cli.server", str(sock), "60"],
        env=cli_env,
        capture_output=True,
        timeout=60,
    )
    lock = sock.with_suffix(".lock")
    expected = f"warm CLI process: cannot lock {lock}: Is a directory\n"
    assert (out.returncode, out.stderr.decode()) == (1, expected)
    assert not sock.exists()


def _socket_file(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener, unixsock.sun_path(path) as where:
        listener.bind(where)  # the socket file stays


def test_a_job_command_says_what_keeps_the_server_from_starting(env: dict[str, str], tmp_path: Path) -> None:
    """A folder as the lock or info file, or a socket as the lock: no server could ever start, so
    every call ran cold, without a word. The job command says so in one line, and runs."""
    sock = sock_for(env)
    sock.parent.mkdir(parents=True, mode=0o700)
    for path, make, what in (
        (sock.with_suffix(".lock"), Path.mkdir, "a directory"),
        (sock.with_suffix(".json"), Path.mkdir, "a directory"),
        (sock.with_suffix(".lock"), _socket_file, "a socket"),
    ):
        make(path)
        out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], env, tmp_path)
        stderr = split(out.stderr)[0].decode()
        assert out.returncode == 0 and out.stdout == b"hi\n", stderr
        assert (
            stderr
            == f"warning: the warm CLI process cannot start: {path} is {what}, not a file (remove it)\n"
        )
        assert not servers_of(env) and not sock.exists()
        path.rmdir() if path.is_dir() else path.unlink()
    out = launcher(["ssh", "run", "--shell", "cmd", "--", "echo hi"], env, tmp_path)
    assert out.returncode == 0 and not split(out.stderr)[0]
    assert wait_for(lambda: sock.exists() and servers_of(env), 30)  # and now it starts
