"""The warm CLI process's files beside its socket, and `ssh persist status`/`stop` for it.

`<key>.json` (the info file: pid, persist, python, started), written whole by the server as it
starts serving and read back, bounded, by `servers`; `<key>.log` (its stderr) and `<key>.lock`
(the start-up lock). A FIFO, a huge file or a symlink to a device in their place blocks or
exhausts nothing: the info file is replaced, and read only when it is a regular file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from stat import S_ISREG
from typing import Any

from win_automation.cli import launch


def info_path(sock: str) -> str:
    return os.path.splitext(sock)[0] + ".json"


def log_path(sock: str) -> str:
    return os.path.splitext(sock)[0] + ".log"


INFO_LIMIT = 4096
"""Bytes of an info file read at most (a server writes ~150): a huge one is not read whole."""


def read_info(path: Path) -> dict[str, Any]:
    """A server's info file; {} when it is unreadable, not a regular file (a FIFO would block,
    /dev/zero never ends), too large or not what a server writes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            return {}
        info = json.loads(os.read(fd, INFO_LIMIT))  # larger: cut, not JSON
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    return info if isinstance(info, dict) else {}


def write_info(path: str, info: dict[str, Any]) -> None:
    """Write a server's info file whole, in place of whatever is there (a FIFO would block the
    server before it serves, holding the start-up lock for good)."""
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(info))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def open_log(path: str) -> Any:
    """The server's log, appended to; /dev/null in place of anything but a regular file (opening
    a FIFO nobody reads would block the exiting job command for good)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
    except OSError:
        return open(os.devnull, "ab")
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return open(os.devnull, "ab")
    return os.fdopen(fd, "ab")


def _is_server(pid: int, sock: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"win_automation.cli.server" in cmdline and os.fsencode(sock) in cmdline


def servers() -> list[dict[str, Any]]:
    """The warm CLI processes recorded in the data dir: pid, socket, started, current, alive."""
    folder = Path(launch.server_dir())
    if not folder.is_dir():
        return []
    current = os.path.basename(launch.socket_path())
    found = []
    for info_file in sorted(folder.glob("*.json")):
        sock = str(info_file.with_suffix(".sock"))
        info = read_info(info_file)
        pid = info.get("pid")
        alive = isinstance(pid, int) and _is_server(pid, sock) and os.path.exists(sock)
        found.append(
            {
                "pid": pid,
                "socket": sock,
                "started": info.get("started"),
                "persist_seconds": info.get("persist"),
                "current": os.path.basename(sock) == current,
                "alive": alive,
            }
        )
    return found


def stop_servers() -> list[dict[str, Any]]:
    """Stop every warm CLI process of the data dir (SIGTERM, with SIGCONT for a paused one;
    SIGKILL after 5 s; running calls go on)."""
    stopped = servers()
    for server in stopped:
        pid, sock = server["pid"], server["socket"]
        # Its socket may be gone (a launcher dropped a paused server's): it is still stopped.
        if isinstance(pid, int) and _is_server(pid, sock):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)  # a paused one takes it too
            deadline = time.monotonic() + 5
            while _is_server(pid, sock) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _is_server(pid, sock):  # wedged: never left behind
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for path in (sock, info_path(sock)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return stopped
