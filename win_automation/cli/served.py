"""One call in a child of the warm CLI process (win_automation.cli.server forks it).

The child reads the launcher's request (win_automation.cli.launch says what it holds), answers
with its pid, waits for "go" with the caller's fds 0/1/2 and working directory, then becomes the
call: the caller's fds, stdio settings, environment, working directory, umask, argv and signal
dispositions. It runs win_automation.cli.app.main() as a fresh process would, its atexit
handlers, and sends the exit status back (or the signal it dies by). A watcher thread turns the
caller's going away (killed) into SIGTERM, which a job command records as `interrupted`, and
raises the signals the caller forwards.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from win_automation import unixsock
from win_automation.cli.finish import run_to_end
from win_automation.cli.server_key import PROTOCOL

REQUEST_TIMEOUT = 10.0  # a launcher sends its request right after connecting
IN_SERVER = False
"""True in a child of the server (a job command there starts no server)."""


# --- the child: one call ------------------------------------------------------------------------
def _read_request(conn: socket.socket) -> list[bytes]:
    conn.settimeout(REQUEST_TIMEOUT)
    size = unixsock.frame_size(unixsock.recv_exact(conn, 4))
    fields = unixsock.recv_exact(conn, size).split(b"\0")
    if fields[0] != b"WA%d" % PROTOCOL:
        raise EOFError("not a launcher request")
    return fields


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    return fds


def _read_go(conn: socket.socket) -> list[int]:
    """The launcher's "go" and its fds 0, 1, 2 and working directory; EOFError when it gave up."""
    data, ancdata, _flags, _addr = conn.recvmsg(5, socket.CMSG_SPACE(16 * 4))
    fds = _received_fds(ancdata)
    if len(data) < 5:
        data += unixsock.recv_exact(conn, 5 - len(data))
    if data != unixsock.frame(b"G") or len(fds) != 4:
        raise EOFError("no go")
    return fds


def _stdio(fd: int, mode: str, spec: bytes, name: str) -> Any:
    """sys.std* for `fd` as a fresh Python process builds it (pylifecycle.c create_stdio)."""
    import io

    encoding, errors, line_buffering, write_through = spec.decode().split(":")
    unbuffered = write_through == "1" and mode == "w"
    buffer: Any = open(fd, mode + "b", buffering=0 if unbuffered else -1, closefd=False)  # noqa: SIM115
    raw = buffer if unbuffered else buffer.raw
    with contextlib.suppress(AttributeError):
        raw.name = name
    stream = io.TextIOWrapper(
        buffer,
        encoding=encoding,
        errors=errors,
        newline="\n",
        line_buffering=line_buffering == "1",
        write_through=write_through == "1",
    )
    stream.mode = mode  # type: ignore[misc]
    return stream


def _become(fields: list[bytes], fds: list[int]) -> None:
    """Take on the caller's fds, stdio, environment, cwd, umask, argv and signal dispositions."""
    umask, ignored, spec_in, spec_out, spec_err, count = fields[1:7]
    argc = int(count)
    argv, env = fields[7 : 7 + argc], fields[7 + argc :]
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.fchdir(fds[3])
    os.close(fds[3])
    os.umask(int(umask))
    for name, fd, mode, spec in (
        ("stdin", 0, "r", spec_in),
        ("stdout", 1, "w", spec_out),
        ("stderr", 2, "w", spec_err),
    ):
        stream = _stdio(fd, mode, spec, f"<{name}>")
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.environ.clear()
    for entry in env:
        key, _, value = entry.partition(b"=")
        if key:
            os.environb[key] = value
    # As importing win_automation.cli.app does in a fresh process.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    time.tzset()
    with contextlib.suppress(Exception):
        import locale

        locale.setlocale(locale.LC_CTYPE, "")
    if "tempfile" in sys.modules:
        setattr(sys.modules["tempfile"], "tempdir", None)  # noqa: B010 (found again from TMPDIR)
    sys.argv = [os.fsdecode(arg) for arg in argv]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it
    for name in filter(None, ignored.decode().split(",")):
        signal.signal(int(name), signal.SIG_IGN)
    if "random" in sys.modules:
        sys.modules["random"].seed()


def _watch(conn: socket.socket, done: Any) -> None:
    """The caller's signals, raised here; its going away (killed) before the end: SIGTERM."""
    try:
        while True:
            kind, payload = unixsock.recv_frame(conn)
            if kind == b"K" and not done.is_set():
                os.kill(os.getpid(), int(payload))
    except (OSError, EOFError, ValueError):
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)


def _run_call() -> tuple[int, int | None]:
    """Run the CLI as the interpreter runs a script: (exit status, signal to die by)."""

    def main() -> None:
        from win_automation.cli.app import main

        main()

    return run_to_end(main)


def spare(channel: socket.socket) -> None:
    """A child forked ahead of a call (win_automation.cli.server): it takes its copy-on-write
    faults (prefault), then becomes the call whose connection the server sends it; it leaves
    when the server closes the channel. Never returns."""
    from win_automation.cli import prefault

    def called() -> bool:
        return bool(select.select([channel], [], [], 0)[0])

    try:
        prefault.populate(called)
        data, ancdata, _flags, _addr = channel.recvmsg(1, socket.CMSG_SPACE(4))
    except OSError:
        os._exit(0)
    fds = _received_fds(ancdata)
    channel.close()
    if data != b"C" or len(fds) != 1:
        os._exit(0)
    child(socket.socket(fileno=fds[0]))


def child(conn: socket.socket) -> None:
    """One call, in the forked child; never returns."""
    status = 1
    try:
        global IN_SERVER
        IN_SERVER = True
        try:
            fields = _read_request(conn)
            conn.settimeout(None)
            conn.sendall(unixsock.frame(b"P", str(os.getpid()).encode()))
            fds = _read_go(conn)  # or EOF: the launcher gave up and runs the call itself
        except (OSError, EOFError, ValueError):
            os._exit(0)
        _become(fields, fds)
        import threading

        done = threading.Event()
        threading.Thread(target=_watch, args=(conn, done), name="launcher-watch", daemon=True).start()
        status, die_by = _run_call()
        done.set()
        with contextlib.suppress(OSError):
            if die_by is not None:
                conn.sendall(unixsock.frame(b"S", str(die_by).encode()))
            else:
                conn.sendall(unixsock.frame(b"X", str(status).encode()))
    finally:
        os._exit(status)
