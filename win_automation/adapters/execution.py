"""What running one remote command returns (`ExecOutcome`) and what runs one (`Executor`).

`SessionSpec` says how to start a warm PowerShell session (ssh.warm_powershell; see
win_automation.adapters.warm_powershell), which `Executor.run_in_session` runs a script in.

Both the in-process SSH connection (win_automation.adapters.ssh) and the warm connection shared
with other processes (win_automation.adapters.persist) are Executors; this module imports
neither paramiko nor anything heavy, so a command that goes through a warm helper stays light.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Chunk = Callable[[bytes], None]

PID_MARKER = b"\x1ewa-pid:"
"""What a command on a posix VM prints first on stderr, then its PID and a newline (operations.ssh
wraps it so): the session leader, whose session `pkill -s` kills. The caller takes it out of the
output; the warm helper reads it as it relays stderr (persist_orphan)."""
PID_LINE = re.compile(re.escape(PID_MARKER) + rb"(\d+)\n")
PID_WAIT = 1.0
"""Seconds a stop (Ctrl-C, output that cannot be written, a caller gone) waits for that PID: sshd
may send other output ahead of it, and without it the session cannot be killed (a command that
prints nothing would outlive the channel)."""


def held_for_pid(stop: Callable[[], bool], waiting: Callable[[], bool]) -> Callable[[], bool]:
    """`stop`, held back while `waiting()` for the PID marker, at most PID_WAIT seconds from the
    first time `stop` said yes."""
    since: list[float] = []

    def held() -> bool:
        if not stop():
            return False
        if not waiting():
            return True
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] > PID_WAIT

    return held


def collector(keep: bool, inner: Chunk | None) -> tuple[list[bytes], Chunk]:
    """A stream's sink: what arrives is kept (when `keep`) in the list and passed on to `inner`."""
    kept: list[bytes] = []

    def feed(data: bytes) -> None:
        if keep:
            kept.append(data)
        if inner is not None:
            inner(data)

    return kept, feed


@dataclass
class ExecOutcome:
    stdout: bytes
    stderr: bytes
    exit_status: int | None
    timed_out: bool
    duration_ms: int
    cancelled: bool = False
    pid: int | None = None
    """The remote process whose tree a timeout or cancel must kill, when the executor knows it
    (a warm session's server); None: the caller finds the command by its own command line."""


@dataclass(frozen=True)
class SessionSpec:
    """A warm PowerShell session: the command line that starts its process on the VM, the first
    line sent to its stdin (the server script), and the command line that kills a session's
    process tree (`{pid}` stands for its PID); sessions are pooled by all three."""

    launch: str
    bootstrap: str
    kill: str


class Executor(Protocol):
    """Runs one command on the VM (no PTY, stdin closed), streaming its output to callbacks."""

    def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
    ) -> ExecOutcome: ...

    def run_in_session(
        self,
        session: SessionSpec,
        script: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
    ) -> ExecOutcome:
        """Run PowerShell `script` in a warm session of this connection (started, or replaced
        when it died, first); a timeout or cancel ends the session (`ExecOutcome.pid` names its
        process) and the next script gets a new one."""
        ...

    def put_bytes(self, remote: str, data: bytes) -> None:
        """Write a small file on the VM (an uploaded script)."""

    def remove(self, remote: str) -> None:
        """Remove a file on the VM (quietly when it is already gone)."""

    def list_folder(self, folder: str) -> list[tuple[str, float]]:
        """(name, mtime) of each entry of a folder on the VM; empty when it does not exist."""
        ...
