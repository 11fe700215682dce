"""Is a job's owner process still alive (or stopped)? Linux /proc with the process start time, so that a pid
reused by another process after the owner died is not mistaken for the owner."""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot) from /proc; None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    """True while `pid` runs and is the same process (same start time); zombies count as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
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
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def process_stopped(pid: int, start: str | None) -> bool:
    """True while `pid` is the same process and stopped by a signal (state T: SIGSTOP, Ctrl-Z)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] == "T" and (start is None or fields[19] == start)
