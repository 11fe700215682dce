"""Is a job's owner process still alive (or stopped)? Linux /proc with the process start time,
so that a pid reused by another process after the owner died is not mistaken for the owner."""

from __future__ import annotations

import os


def _fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name, the state first. Read as bytes: a
    name that is not UTF-8 (any process may set its own, and a pid is reused) is never decoded."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rpartition(b")")[2].decode("ascii").split()


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot) from /proc; None when unknown."""
    try:
        return _fields(pid)[19]
    except OSError:
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """True while `pid` runs and is the same process (same start time); zombies count as dead."""
    try:
        fields = _fields(pid)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def process_stopped(pid: int, start: str | None) -> bool:
    """True while `pid` is the same process and stopped by a signal (state T: SIGSTOP, Ctrl-Z;
    not a debugger's stop, t)."""
    try:
        fields = _fields(pid)
    except OSError:
        return False
    return fields[0] == "T" and (start is None or fields[19] == start)
