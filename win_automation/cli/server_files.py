"""The warm CLI process's files beside its socket, and `ssh persist status`/`stop` for it.

`<key>.json` (the info file: pid, persist, python, started), written whole by the server as it
starts serving and read back, bounded, by `servers`; `<key>.log` (its stderr) and `<key>.lock`
(the start-up lock). The info file and the log are win_automation.infofiles', as the warm
helper's: a FIFO, a huge file or a device in their place blocks or exhausts nothing; what in
place of the lock or info file keeps a server from ever starting is `blocked_by`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from win_automation import unixsock
from win_automation.cli import launch
from win_automation.infofiles import read_info
from win_automation.regularfiles import kind

MODULE = "win_automation.cli.server"


def info_path(sock: str) -> str:
    return os.path.splitext(sock)[0] + ".json"


def log_path(sock: str) -> str:
    return os.path.splitext(sock)[0] + ".log"


def blocked_by(sock: str) -> str | None:
    """What in the server's folder keeps it from ever starting for `sock` (every call would be
    cold, without a word): its lock file or info file's name taken by what it cannot open or
    replace (a folder; a socket or device as the lock)."""
    for path, usable in (
        (unixsock.lock_path(sock), (stat.S_ISREG, stat.S_ISFIFO)),
        (info_path(sock), (stat.S_ISREG, stat.S_ISFIFO, stat.S_ISLNK, stat.S_ISSOCK)),
    ):
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if not any(test(mode) for test in usable):
            return f"{path} is {kind(mode)}, not a file"
    return None


def _is_server(pid: int, sock: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return os.fsencode(MODULE) in cmdline and os.fsencode(sock) in cmdline


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
    """Stop every warm CLI process of the data dir, also one still starting (SIGTERM, with
    SIGCONT for a paused one; SIGKILL after 5 s; running calls go on)."""
    stopped = servers()
    recorded = {server["pid"] for server in stopped}
    current = os.path.basename(launch.socket_path())
    for pid, sock in unixsock.processes(launch.server_dir(), MODULE).items():
        if pid not in recorded:
            starting = {"pid": pid, "socket": sock, "started": None, "persist_seconds": None}
            stopped.append({**starting, "current": os.path.basename(sock) == current, "alive": False})
    for server in stopped:
        pid, sock = server["pid"], server["socket"]
        # Its socket may be gone (a launcher dropped a paused server's): it is still stopped.
        if isinstance(pid, int) and _is_server(pid, sock):
            unixsock.terminate(pid, lambda: _is_server(pid, sock))  # noqa: B023 (called at once)
        for path in (sock, info_path(sock)):
            with contextlib.suppress(OSError):  # gone, or a folder in its place: left as it is
                os.unlink(path)
    return stopped
