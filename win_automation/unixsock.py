"""Private Unix sockets in the data dir, shared by the warm-connection helper (adapters/persist*)
and the warm CLI process (cli/launch, cli/server): the folder only you may enter, the socket
owned by you with mode 0600, paths too long for sun_path, the start-up lock, the peer's uid; and
the frames both speak: 1 type byte, a 4-byte big-endian length, the payload.

Only `os` and `stat` at import (both loaded by every Python start-up): the CLI launcher imports
this module, and each module it pulls in costs every CLI call. Errors are StorageError (exit 74),
imported where raised.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # not `typing`: ~10 ms the launcher does not pay

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from socket import socket
    from typing import Protocol

    from win_automation.errors import StorageError

    class Receiver(Protocol):  # socket.socket, and the launcher's _socket.socket
        def recv(self, size: int, /) -> bytes: ...


# sun_path holds 108 bytes; longer paths are reached through /proc/self/fd/N/<name>.
_MAX_SUN_PATH = 100
_REFUSE_HINT = "remove it or set ssh.persist 0"


def _storage_error(message: str) -> StorageError:
    from win_automation.errors import StorageError

    return StorageError(message)


def ensure_dir(folder: str | os.PathLike[str]) -> None:
    """Create `folder` (0700) when missing; refuse one that is not a directory of yours, and take
    group and other access away from one that has it."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise _storage_error(
            f"ssh.persist: cannot create {os.fspath(folder)}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise _storage_error(
            f"ssh.persist: refusing {os.fspath(folder)}: not a directory owned by you (set ssh.persist 0)"
        )
    if info.st_mode & 0o077:
        try:  # noqa: SIM105 (contextlib costs the launcher an import)
            os.chmod(folder, 0o700)
        except OSError:
            pass


def check_socket(path: str | os.PathLike[str]) -> bool:
    """False when there is no socket; True when it is ours (0600); StorageError otherwise."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error(f"ssh.persist: cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    where = os.fspath(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise _storage_error(f"ssh.persist: refusing {where}: not a socket ({_REFUSE_HINT})")
    if info.st_uid != os.geteuid():
        raise _storage_error(
            f"ssh.persist: refusing {where}: owned by uid {info.st_uid}, not by you ({_REFUSE_HINT})"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise _storage_error(
            f"ssh.persist: refusing {where}: mode {stat.S_IMODE(info.st_mode):04o}, not 0600 ({_REFUSE_HINT})"
        )
    return True


class sun_path:
    """A path for bind()/connect(): `path` itself, or /proc/self/fd/N/<name> when too long.
    A class, not contextlib: the launcher does not import contextlib."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd: int | None = None

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) <= _MAX_SUN_PATH:
            return self.path
        self.fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self.fd}/{os.path.basename(self.path)}"

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_path(sock: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(sock))[0] + ".lock"


def locked(sock: str | os.PathLike[str], timeout: float) -> AbstractContextManager[None]:
    """An exclusive lock on `<sock without suffix>.lock`: of two processes starting a server for
    `sock` at once, the second waits and then finds the first serving. TimeoutError when it is
    still held after `timeout` seconds (its holder paused, or not ours: each process that waited
    for good stayed, one more at each call)."""
    import contextlib
    import fcntl
    import time

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        fd = os.open(lock_path(sock), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{lock_path(sock)} is held by another process") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    return hold()


def peer_uid(conn: socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    import socket as _socket
    import struct

    creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def serving(sock: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when a process listens at `sock`: it accepts connections, or its backlog stays full
    for `timeout` seconds (a paused or swamped server: there, but not answering; its callers
    replace it). Never waits longer than `timeout`: a blocking connect() to a full backlog would
    wait for as long as the server does not accept."""
    import errno
    import socket as _socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        probe.setblocking(False)  # a full backlog: EAGAIN at once (Unix sockets never EINPROGRESS)
        try:
            with sun_path(sock) as where:
                probe.connect(where)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.01)
            continue
        finally:
            probe.close()
        return True


# --- the processes behind the sockets ---------------------------------------------------------
def _parent(pid: str) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat_file:
        return int(stat_file.read().rsplit(b")", 1)[1].split()[1])


def processes(folder: str | os.PathLike[str], module: str) -> dict[int, str]:
    """pid -> socket of this user's processes `python -m MODULE SOCKET ...` for a SOCKET in
    `folder`, from /proc: also one still starting (connecting, importing: not yet serving or
    recorded); not their children (a warm CLI process's calls and spare)."""
    marker, where = os.fsencode(module), os.fsencode(os.path.join(folder, ""))
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
            if marker not in args or not args[args.index(marker) + 1].startswith(where):
                continue
            with open(f"/proc/{_parent(pid)}/cmdline", "rb") as cmdline:
                if marker in cmdline.read().split(b"\0"):
                    continue  # a child of one
        except (OSError, ValueError, IndexError):
            continue
        found[int(pid)] = os.fsdecode(args[args.index(marker) + 1])
    return found


def terminate(pid: int, running: Callable[[], bool], grace: float = 5.0) -> None:
    """SIGTERM `pid` (with SIGCONT: a paused process takes it too); SIGKILL once `running()`
    is still true after `grace` seconds."""
    import signal
    import time

    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while running() and time.monotonic() < deadline:
        time.sleep(0.02)
    if running():  # wedged: never left behind
        try:  # noqa: SIM105 (contextlib costs the launcher an import)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- frames -------------------------------------------------------------------------------------
# The largest frame either end takes. Ours are far smaller (a request is a command or a script of
# at most 32 MiB, JSON-escaped, or argv and an environment; output goes in slices of 4 MiB); a
# length over it is a corrupt or hostile peer, refused before anything is allocated for it.
MAX_FRAME = 256 * 1024 * 1024
_RECV_CHUNK = 1024 * 1024  # recv(n) allocates n bytes first: never a length the peer claimed


class FrameTooLarge(OSError):
    """A frame whose length is over MAX_FRAME (an OSError: callers treat it as a broken peer)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def frame_size(length: bytes) -> int:
    """The size a frame's 4-byte length gives; FrameTooLarge over MAX_FRAME."""
    size = int.from_bytes(length, "big")
    if size > MAX_FRAME:
        raise FrameTooLarge(f"a frame of {size} bytes, over the {MAX_FRAME} a frame may be")
    return size


def recv_exact(conn: Receiver, size: int) -> bytes:
    """`size` bytes; EOFError at the end of the stream before them."""
    buf = bytearray()
    while len(buf) < size:
        data = conn.recv(min(size - len(buf), _RECV_CHUNK))
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


def recv_frame(conn: Receiver) -> tuple[bytes, bytes]:
    """(kind, payload); EOFError at the end of the stream, FrameTooLarge for a length over
    MAX_FRAME."""
    header = recv_exact(conn, 5)
    size = frame_size(header[1:])
    return header[:1], recv_exact(conn, size) if size else b""
