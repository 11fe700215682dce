"""The warm CLI process: a per-user server that has imported the CLI and forks for each call.

`python -m win_automation.cli.server SOCKET PERSIST [--after-parent PID]` (started in the background
by the first job command when `ssh.persist` > 0, see `start_later`; it imports once that command
has exited). It imports the CLI app and what a job command
needs (typer, pydantic, the config, engines, workflows, operations, the journal, rich; not
paramiko, the Hatchet SDK or Playwright, which the commands that use them import themselves),
listens on SOCKET (win_automation.cli.launch says where, and the protocol), and for each caller
of its own uid (SO_PEERCRED) hands the connection to a child that becomes that call
(win_automation.cli.served): the spare, forked ahead of the call, which has taken its
copy-on-write faults meanwhile (win_automation.cli.prefault), or, when two calls come at once, a
child forked for it. A spare costs ~30 MiB of memory while the server waits.

Single-threaded; it reaps its children and tells a caller whose child was killed by a signal.
It exits after PERSIST seconds without a call (none running), when its socket is removed or
replaced, when the sources change (the launcher no longer picks it), or on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import select
import signal
import socket
import sys
import time
import warnings
from typing import Any

from win_automation import unixsock
from win_automation.cli import launch, orphans, served
from win_automation.cli.server_files import blocked_by, info_path, log_path
from win_automation.cli.server_files import servers as servers  # `ssh persist status`
from win_automation.cli.server_files import stop_servers as stop_servers  # `ssh persist stop`
from win_automation.cli.server_key import server_key
from win_automation.infofiles import open_log, write_info
from win_automation.jobs.owners import process_stopped

CHECK_EVERY = 1.0
STALE_CHECK_EVERY = 2.0
# What a job command needs; imported once here, not by each call.
PRELOAD = (
    "win_automation.cli.app",
    "win_automation.cli.commands.run",
    "win_automation.config",
    "win_automation.config.load",
    "win_automation.engines.dispatch",
    "win_automation.engines.local",
    "win_automation.operations.vm",
    "win_automation.operations.command_result",
    "win_automation.artifacts.store",
    "win_automation.jobs.journal",
    "workflows",
    "workflows.ssh_exec",
    "sqlite3",
    "rich.console",
    "rich.table",
    "win_automation.cli.prefault",
    "win_automation.cli.server",  # job commands call start_later: this process runs as __main__
)
NEVER = ("paramiko", "hatchet_sdk", "playwright")
"""Modules the server must not hold: a call that does not need them does not pay for them."""

AFTER_PARENT = "--after-parent"
"""`--after-parent PID`: import only once the starting process (PID) has exited: its call's end
does not share the CPU with the server's imports. Named, not read with getppid() once started:
a starter that already ended (its call ends with os._exit, win_automation.cli.finish) left this
process to init, and a wait for that parent to change would last all of PARENT_WAIT."""
PARENT_WAIT = 5.0


# --- who runs -----------------------------------------------------------------------------------
def _lock_free(sock: str) -> bool:
    """True when no server for `sock` is starting (the start-up lock is free)."""
    try:
        fd = os.open(unixsock.lock_path(sock), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def start_later(persist: float) -> None:
    """Start the warm CLI process for this code and data dir as this process exits, when none
    serves or is starting (a job command calls this; it does not wait for the server)."""
    if served.IN_SERVER or persist <= 0 or launch.server_off():
        return
    sock = launch.socket_path()
    try:
        unixsock.ensure_dir(os.path.dirname(sock))
        writable = os.access(os.path.dirname(sock), os.W_OK)  # else it could not listen there
        if unixsock.check_socket(sock) or not writable:
            return
        if (blocked := blocked_by(sock)) is not None:
            sys.stderr.write(f"warning: the warm CLI process cannot start: {blocked} (remove it)\n")
            return
        if not _lock_free(sock):
            return
    except Exception:  # an unusable data dir or a foreign socket: the job runs; the launcher says it
        return
    atexit.register(_spawn_quietly, sock, persist)


def _spawn_quietly(sock: str, persist: float) -> None:
    with contextlib.suppress(OSError):
        spawn(sock, persist)


def spawn(sock: str, persist: float) -> None:
    import subprocess

    # Not the caller's settings or secrets (each call brings its own environment).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
    # Not waited for (it outlives this process): Popen, collected at once, would warn of it.
    with open_log(log_path(sock)) as log, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "win_automation.cli.server",
                sock,
                repr(float(persist)),
                AFTER_PARENT,
                str(os.getpid()),
            ],
            env=env,
            # `-m` puts the working folder first on the module path: the server's own folder
            # holds no modules (the caller's may: a project's `workflows`, a `json.py`).
            cwd=os.path.dirname(sock),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


# --- the server ---------------------------------------------------------------------------------
class Server:
    def __init__(self, sock: str, persist: float) -> None:
        self.sock = sock
        self.persist = persist
        self.key = os.path.splitext(os.path.basename(sock))[0]
        self.children: dict[int, socket.socket] = {}
        self.last = time.monotonic()
        self.stop = False
        self.listener: socket.socket | None = None
        self.spare: tuple[int, socket.socket] | None = None
        """The child forked ahead of the next call (pid, the channel it gets that call on)."""
        self.spares = True
        """False after a spare died before it took a call, until a call is served: a spare that
        cannot live is not forked again and again."""
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def listen(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with unixsock.sun_path(self.sock) as where:
                listener.bind(where)
        finally:
            os.umask(old)
        os.chmod(self.sock, 0o600)
        listener.listen(64)
        self.listener = listener
        return listener

    def reap(self) -> None:
        while self.children or self.spare is not None:  # a spare killed while idle: no zombie
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                if self.spare is not None and self.spare[0] == pid:  # killed before its call
                    self.spare[1].close()
                    self.spare = None
                    self.spares = False
                continue
            if os.WIFSIGNALED(status):  # it could not say so itself: tell its launcher
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(unixsock.frame(b"S", str(os.WTERMSIG(status)).encode()))
            conn.close()
            self.last = time.monotonic()

    def _leave_parent(self) -> None:
        """In a new child: hold none of the server's sockets and pipes."""
        assert self.listener is not None
        self.listener.close()
        for other in self.children.values():
            other.close()
        if self.spare is not None:
            self.spare[1].close()
        signal.set_wakeup_fd(-1)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def fork(self, conn: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:
            self._leave_parent()
            served.child(conn)
        self.children[pid] = conn

    def fork_spare(self) -> None:
        """Fork the child that takes the next call: the fork, and the copy-on-write faults it
        takes ahead (served.spare), are then not part of that call (4-9 ms of ~45)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            self._leave_parent()
            ours.close()
            served.spare(theirs)
        theirs.close()
        self.spare = (pid, ours)

    def drop_spare(self) -> None:
        if self.spare is not None:
            pid, channel = self.spare
            self.spare = None
            channel.close()
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

    def hand_over(self, conn: socket.socket) -> None:
        """The call on `conn` to the spare (one that is stopped, SIGSTOP, is replaced), else to
        a child forked for it."""
        if self.spare is not None and not process_stopped(self.spare[0], None):
            pid, channel = self.spare
            self.spare = None
            try:
                rights = conn.fileno().to_bytes(4, sys.byteorder)
                channel.sendmsg([b"C"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            except OSError:  # it died: reaped with the others
                pass
            else:
                self.children[pid] = conn
                return
            finally:
                channel.close()
        self.drop_spare()
        self.fork(conn)
        self.spares = True

    def mine(self, inode: int) -> bool:
        try:
            return os.lstat(self.sock).st_ino == inode
        except OSError:
            return False

    def serve(self) -> None:
        listener = self.listener
        assert listener is not None
        inode = os.lstat(self.sock).st_ino
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        next_stale_check = time.monotonic() + STALE_CHECK_EVERY
        while not self.stop:
            if self.spare is None and self.spares and not self.children:
                self.fork_spare()  # not while a call runs: its faults would slow that call
            watched: list[Any] = [listener, self.wake_r]
            ready = select.select(watched, [], [], CHECK_EVERY)[0]
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            self.reap()
            orphans.wake(self.children)
            if listener in ready:
                self.accept(listener)
            if not self.mine(inode):
                break  # removed (stopped, or dropped by a launcher it did not answer) or replaced
            if not self.children and time.monotonic() - self.last > self.persist:
                break
            if time.monotonic() >= next_stale_check:
                next_stale_check = time.monotonic() + STALE_CHECK_EVERY
                if server_key() != self.key:
                    break  # the sources changed: the launcher no longer picks this server
        listener.close()
        self.drop_spare()
        mine = self.mine(inode)
        leftovers = [self.sock, info_path(self.sock)] if mine else []
        if (mine or not os.path.lexists(self.sock)) and _lock_free(self.sock):
            # The last server of this key (each code change makes a new key): its lock and log go
            # too, so old keys' files do not pile up. A crashed server's log stays.
            leftovers += [info_path(self.sock), unixsock.lock_path(self.sock), log_path(self.sock)]
        for path in leftovers:
            with contextlib.suppress(OSError):  # gone, or a folder in its place, a read-only folder
                os.unlink(path)

    def accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        self.last = time.monotonic()
        try:
            if unixsock.peer_uid(conn) != os.geteuid():
                conn.close()
                return
            self.hand_over(conn)
        except OSError:
            conn.close()


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from win_automation.cli.app import warm
    from win_automation.config import field_specs
    from win_automation.operations.vm import preload

    preload()
    warm()
    field_specs()  # cached: each call's config load reads it
    leaked = [name for name in NEVER if name in sys.modules]
    if leaked:
        raise RuntimeError(f"the warm CLI process must not import {', '.join(leaked)}")


def main(argv: list[str]) -> int:
    sock, persist = argv[0], float(argv[1])
    try:
        lock = os.open(unixsock.lock_path(sock), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a folder in its place, a full or read-only disk: calls run in-process
        sys.stderr.write(f"warm CLI process: cannot lock {unixsock.lock_path(sock)}: {exc.strerror or exc}\n")
        return 1
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another one is starting
    server = Server(sock, persist)
    if server_key() != server.key:
        return 0  # the sources changed since the starter looked: its key is stale already
    try:
        if unixsock.check_socket(sock) and unixsock.serving(sock):
            return 0  # one serves already
    except Exception as exc:  # a socket that is not ours: leave it (the launcher refuses it)
        sys.stderr.write(f"warm CLI process: {exc}\n")
        return 1
    if argv[2:3] == [AFTER_PARENT]:
        parent, deadline = int(argv[3]), time.monotonic() + PARENT_WAIT
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.01)
    os.chdir("/")  # holds no caller's folder (each child takes its caller's)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _preload()
    info = {
        "pid": os.getpid(),
        "persist": persist,
        "python": sys.executable,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # before the socket appears: a SIGTERM from whoever finds it (`ssh persist stop`) is then a
    # stop, never the default death that leaves the socket and its info file behind
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "stop", True))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server.listen()
        write_info(info_path(sock), info)
    except OSError as exc:  # a full disk, a read-only folder: calls run in-process, as without it
        where = exc.filename2 or exc.filename or sock  # the info file, when it is what failed
        sys.stderr.write(f"warm CLI process: cannot serve at {sock}: {where}: {exc.strerror or exc}\n")
        for path in (sock, info_path(sock)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return 1
    os.close(lock)  # listening: a starter now finds the socket
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
