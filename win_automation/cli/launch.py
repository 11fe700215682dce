"""The `win-automation` command: a small launcher in front of the warm CLI process.

A CLI call is a Python start-up plus the imports of typer and pydantic (~200 ms of CPU) before
any work. With a warm CLI process (win_automation.cli.server: a per-user process that has
imported all that, started by the first job command when `ssh.persist` > 0), a call costs this
launcher plus a fork of that process instead. The launcher imports only what every Python
start-up has loaded (`os`, `sys`, the C modules `_socket` and `_signal`),
win_automation.unixsock and win_automation.cli.server_key; `python -X importtime -m
win_automation.cli.launch` shows it.

1. It finds the server's socket, `<data dir>/cli-server/<key>.sock`. The data dir is
   WIN_AUTOMATION_DATA_DIR or the default `~/.local/share/win-automation` (never `data.dir` from
   a config file: loading the config is what the launcher exists to avoid). `<key>`
   (win_automation.cli.server_key) hashes this interpreter, the package, the sources' and the
   installed distributions' mtimes and the process's credentials, so a server never runs other
   code than a fresh process would.
2. It sends its argv, environment, umask and stdio settings and waits for the forked child's
   pid; then it says "go" with its fds 0/1/2 and working directory (SCM_RIGHTS). A server that does not
   answer within CONNECT_TIMEOUT (paused, overloaded) is dropped (its socket removed: it leaves,
   a new one is started later) and the call runs here instead; the child of such a server, if it
   ever gets the request, finds the launcher gone and runs nothing. So a command runs once. A
   connection that ends before the pid (a server that left, or died while its spare child
   still held the listener) drops the socket too.
3. It forwards SIGINT, SIGTERM and SIGHUP to the child (Ctrl-Z stops the child with it, and
   `fg`/`bg` continue both) and exits with the child's exit status, or dies by the signal that
   killed the child.

No server, `WIN_AUTOMATION_SSH_PERSIST=0` or `WIN_AUTOMATION_CLI_SERVER=0`, a closed fd 0/1/2,
a file named by a descriptor (`/dev/fd/N`: see names_fds), or any failure before "go": the CLI
runs in this process (win_automation.cli.app.main), exactly as without a server. A socket that
is not yours or not 0600, or something else in its place (a file, a folder), is never connected
to: the call runs in this process, after a one-line warning that names it and the way out.
"""

from __future__ import annotations

import os
import sys

from win_automation import unixsock
from win_automation.cli.server_key import PROTOCOL, read_file, server_key
from win_automation.unixsock import frame, recv_frame

TYPE_CHECKING = False  # not `typing`: ~10 ms each call would pay
if TYPE_CHECKING:
    import _socket
    from collections.abc import Mapping

CONNECT_TIMEOUT = 1.0
"""Seconds for connecting and getting the child's pid; past them the call runs in-process."""
WATCH_EVERY = 1.0
ORPHAN_GRACE = 5.0
"""Seconds a call's child may be dead before its server tells how (paused): then exit 1."""
DEFAULT_DATA_DIR = "~/.local/share/win-automation"  # DataConfig.dir's default (a test checks)
FORWARDED = (2, 15, 1)  # SIGINT, SIGTERM, SIGHUP (signal numbers: the signal module costs ~3 ms)
STOP, CONT, TSTP = 19, 18, 20  # SIGSTOP, SIGCONT, SIGTSTP (Linux)
MIRRORED = (2, 15, 1, 3)  # ... and SIGQUIT: an ignored one (nohup, `cmd &`) stays ignored there
_OFF = frozenset({"0", "false", "no", "off"})

# Frames (both ways): 1 type byte, a 4-byte big-endian length, the payload. Launcher: `G` (go),
# `K` (a signal number to raise in the child). Child: `P` (its pid: request taken), `X` (the
# exit status). Server: `S` (the child died by this signal number).


def data_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the launcher looks (and job commands start) the server: WIN_AUTOMATION_DATA_DIR or
    the default, made absolute against the working directory (as the config resolves it)."""
    env = os.environ if environ is None else environ
    folder = env.get("WIN_AUTOMATION_DATA_DIR") or DEFAULT_DATA_DIR
    if folder.startswith("~"):
        home = env.get("HOME")
        folder = (
            os.path.join(home, folder[2:]) if home and folder.startswith("~/") else os.path.expanduser(folder)
        )
    return os.path.abspath(folder)


def server_dir(environ: Mapping[str, str] | None = None) -> str:
    return os.path.join(data_dir(environ), "cli-server")


def socket_path(environ: Mapping[str, str] | None = None) -> str:
    return os.path.join(server_dir(environ), server_key() + ".sock")


def _zero_duration(value: str) -> bool:
    """True for a duration the config reads as 0: zeros, a fraction of zeros, a unit (`00`,
    `0.0s`, `0 ms`); without `re`, which costs the launcher ~6 ms."""
    text = value.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit):
            text = text[: -len(unit)].rstrip()
            break
    whole, dot, fraction = text.partition(".")
    return all(
        part.isascii() and part.isdigit() and not part.strip("0")
        for part in ((whole, fraction) if dot else (whole,))
    )


def server_off() -> bool:
    """No server, no launcher: WIN_AUTOMATION_SSH_PERSIST=0 (as a duration: 0, 0s, 0ms...), or
    WIN_AUTOMATION_CLI_SERVER=0 (the SSH helper without the warm CLI process)."""
    persist = os.environ.get("WIN_AUTOMATION_SSH_PERSIST")
    server = os.environ.get("WIN_AUTOMATION_CLI_SERVER")
    return (persist is not None and _zero_duration(persist)) or (
        server is not None and server.strip().lower() in _OFF
    )


# --- the request --------------------------------------------------------------------------------
def _stdio_spec(stream: object) -> bytes:
    """How this (fresh) process set up a std stream: the child rebuilds its own the same way."""
    fields = (
        getattr(stream, "encoding", "utf-8"),
        getattr(stream, "errors", "strict"),
        "1" if getattr(stream, "line_buffering", False) else "0",
        "1" if getattr(stream, "write_through", False) else "0",
    )
    return ":".join(fields).encode()


def encode_request() -> bytes:
    """argv, environment, umask, ignored signals and stdio settings: NUL-separated fields (none
    of them can hold a NUL)."""
    import _signal  # type: ignore[import-not-found]  # `signal` imports enum: ~3 ms

    umask = os.umask(0o22)
    os.umask(umask)
    ignored = [str(n) for n in MIRRORED if _signal.getsignal(n) == _signal.SIG_IGN]
    argv = [os.fsencode(arg) for arg in sys.argv]
    env = [key + b"=" + value for key, value in os.environb.items()]
    fields = [
        b"WA%d" % PROTOCOL,
        str(umask).encode(),
        ",".join(ignored).encode(),
        _stdio_spec(sys.stdin),
        _stdio_spec(sys.stdout),
        _stdio_spec(sys.stderr),
        str(len(argv)).encode(),
        *argv,
        *env,
    ]
    return b"\0".join(fields)


class _NotRun(Exception):
    """The call did not start on the server: run it here."""


def _connect(path: str) -> tuple[_socket.socket, int]:
    """A connection on which a child of the server took the request, and the child's pid;
    _NotRun otherwise."""
    import _socket

    try:
        os.lstat(path)
    except OSError:  # none, or a data dir that is a file or not yours: the CLI says what is wrong
        raise _NotRun from None
    if not unixsock.check_socket(path):  # a socket not yours or not 0600: StorageError (exit 74)
        raise _NotRun
    fds = [0, 1, 2]
    try:
        fds.append(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        raise _NotRun from exc
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        try:
            with unixsock.sun_path(path) as where:
                conn.connect(where)
        except (ConnectionRefusedError, FileNotFoundError):
            _drop(path)  # its server is gone: a job command starts a new one
            raise _NotRun from None
        payload = encode_request()
        try:
            conn.sendall(len(payload).to_bytes(4, "big") + payload)
            kind, pid = recv_frame(conn)
        except (ConnectionError, EOFError):
            # Ended before a child took it: a server that left, or died while a child of its
            # (a spare) still held the listener. Its socket goes, or no job command would start
            # a new server while it stays.
            _drop(path)
            raise _NotRun from None
        if kind != b"P":
            raise _NotRun
        child = int(pid)
        conn.settimeout(None)
        # The fds go with "go", to a child that is there: none stays in flight in a server that
        # never takes the request (a pipe the caller's reader waits on would never end). From
        # "go" on, the signals the child must get wait until _wait forwards them: a Ctrl-Z in
        # between stopped only this process, and the call ran on.
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        _hold_signals(True)
        try:
            conn.sendmsg([frame(b"G")], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        except BaseException:
            _hold_signals(False)
            raise
    except TimeoutError:
        _drop(path)  # paused or overloaded: it leaves when it finds its socket gone
        conn.close()
        raise _NotRun from None
    except (OSError, EOFError):
        conn.close()
        raise _NotRun from None
    finally:
        os.close(fds[3])
    return conn, child


def _hold_signals(hold: bool) -> None:
    """Block (or unblock: pending ones are then delivered) the signals _wait forwards."""
    import _signal

    _signal.pthread_sigmask(_signal.SIG_BLOCK if hold else _signal.SIG_UNBLOCK, (*FORWARDED, TSTP))


def _drop(path: str) -> None:
    """Remove a server's socket that did not answer; it exits when it finds it gone."""
    try:  # noqa: SIM105 (contextlib costs the launcher an import)
        os.unlink(path)
    except OSError:
        pass


def _ended(child: int) -> bool:
    """True when the child has exited: gone, or a zombie its server has not reaped (without
    /proc, only gone)."""
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return read_file(f"/proc/{child}/stat").rpartition(b")")[2].split()[:1] == [b"Z"]


def _answer_or_end(conn: _socket.socket, child: int) -> bool:
    """Wait until the connection has something to read (a frame, or its end): True; False when
    the child has exited without a word for ORPHAN_GRACE s. A child that ends sends its status
    first; one killed by a signal is told by the server, which holds the connection open until
    then, so a paused server would keep this process waiting for good after the call ended."""
    import _socket

    quiet = 0.0
    conn.settimeout(WATCH_EVERY)
    try:
        while True:
            try:
                conn.recv(1, _socket.MSG_PEEK)
                return True
            except TimeoutError:
                quiet = quiet + WATCH_EVERY if _ended(child) else 0.0
                if quiet >= ORPHAN_GRACE:
                    return False
    finally:
        conn.settimeout(None)


def _wait(conn: _socket.socket, child: int) -> int:
    """Forward signals to the child; its exit status (or die by the signal that killed it)."""
    import _signal

    def forward(signum: int, _frame: object) -> None:
        """Raise the signal in the child; continue it too, when stopped (SIGSTOP), to take it (as
        a shell's `kill` does to a stopped job): else Ctrl-C would wait for a `kill -CONT`."""
        try:
            conn.sendall(frame(b"K", str(signum).encode()))
            os.kill(child, CONT)
        except OSError:
            pass

    def suspend(signum: int, _frame: object) -> None:
        """Ctrl-Z: stop the child with this process, and let it go on with it (`fg`, `bg`)."""
        try:  # noqa: SIM105
            os.kill(child, STOP)
        except OSError:
            pass
        _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # stops here; returns once continued
        _signal.signal(signum, suspend)
        try:  # noqa: SIM105
            os.kill(child, CONT)
        except OSError:
            pass

    for signum in FORWARDED:
        if _signal.getsignal(signum) != _signal.SIG_IGN:
            _signal.signal(signum, forward)
    if _signal.getsignal(TSTP) == _signal.SIG_DFL:
        _signal.signal(TSTP, suspend)
    _hold_signals(False)  # held since "go": now forwarded
    while True:
        try:
            if not _answer_or_end(conn, child):
                raise EOFError
            kind, payload = recv_frame(conn)
        except (OSError, EOFError):
            sys.stderr.write("error: the warm CLI process ended without an exit status\n")
            return 1
        if kind == b"X":
            return int(payload)
        if kind == b"S":  # the child was killed by a signal: so is this process
            signum = int(payload)
            _die_by(signum)
            return 128 + signum


def names_fds() -> bool:
    """True when the arguments or a setting in the environment name a file by a descriptor of
    this process (`/dev/fd/N`, which `<(...)` passes; `/proc/self/fd/N`): the server's child has
    only the caller's fds 0, 1 and 2 (there the name would be another file, or none)."""
    values = [os.fsencode(arg) for arg in sys.argv[1:]]
    values += [v for k, v in os.environb.items() if k.startswith((b"WIN_AUTOMATION_", b"HATCHET_"))]
    return any(b"/dev/fd/" in v or (b"/proc/" in v and b"/fd/" in v) for v in values)


def through_server() -> int | None:
    """The exit status of the call run by the warm CLI process, or None: run it here."""
    if server_off() or sys.stdin is None or sys.stdout is None or sys.stderr is None or names_fds():
        return None
    try:
        path = socket_path()
        conn, child = _connect(path)
    except _NotRun:
        return None
    except Exception as exc:  # a socket not ours, or not a socket (StorageError): not connected to
        if getattr(exc, "exit_code", None) is not None:
            said = str(exc).replace("\n", "\\n")  # a path's line break does not split the line
            sys.stderr.write(f"warning: {said}; this call runs without the warm CLI process\n")
        return None
    return _wait(conn, child)


def _die_by(signum: int) -> None:
    """End this process by `signum`, as the signal ends a program (a shell's loop stops)."""
    import _signal

    _signal.signal(signum, _signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def main() -> None:
    """Console entry point: through the warm CLI process when one serves, else in-process."""
    die_by = None
    try:
        code = through_server()
        if code is None:
            from win_automation.cli.app import main as run_here
            from win_automation.cli.finish import run_to_end

            code, die_by = run_to_end(run_here)  # then os._exit: no teardown (cli.finish says why)
    except KeyboardInterrupt:
        # Ctrl-C before a command began: while a paused server is waited for (up to
        # CONNECT_TIMEOUT), or during the CLI's imports. Nothing ran: end as Ctrl-C ends a
        # program, by SIGINT (a shell's loop stops), without Python's traceback.
        _die_by(2)
        os._exit(130)
    if die_by is not None:
        _die_by(die_by)
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
