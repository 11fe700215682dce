"""The warm-connection helper's kill of a command whose caller went away while it ran.

A caller killed outright (SIGKILL) kills nothing on the VM, and the end of a channel does not end
a command that prints nothing: it would run on for good. So a command's request names the command
line that kills its tree (`kill`, built by win_automation.operations.ssh), and the helper runs it
when the caller is gone (not when it cancelled and waits: it kills the tree itself). `{pid}` in
it stands for: a warm session's PID (`session`), or (`exec`, a posix VM) the PID the command
printed first on stderr, `\\x1ewa-pid:PID\\n` (operations.ssh._execute's marker, which the caller
takes out of the output; the helper only reads it as it relays the bytes).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from win_automation.adapters.execution import PID_LINE, PID_MARKER, held_for_pid

if TYPE_CHECKING:
    from win_automation.adapters.ssh import SshConnection

log = logging.getLogger("win_automation.persist_helper")
_PID_SO_FAR = re.compile(re.escape(PID_MARKER) + rb"\d*")


class Orphan:
    """One request's kill, should its caller go away: for an `exec` whose kill needs the PID, a
    tap on the relayed stderr reads the marker, and a cancel waits for it (see `held`)."""

    def __init__(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        kill = request.get("kill") if op in ("exec", "session") else None
        self.kill = None if kill is None else str(kill)
        self.pid: int | None = None
        self.head = b""
        self.waiting = op == "exec" and self.kill is not None and "{pid}" in self.kill

    def stderr(self, data: bytes) -> None:
        """The command's stderr as it is relayed: the PID marker is at its very start."""
        if not self.waiting:
            return
        self.head += data
        match = PID_LINE.match(self.head)
        if match is not None:
            self.pid = int(match.group(1))
        elif PID_MARKER.startswith(self.head) or _PID_SO_FAR.fullmatch(self.head):
            return  # the rest of it is on its way
        self.waiting = False
        self.head = b""

    def held(self, cancelled: Callable[[], bool]) -> Callable[[], bool]:
        """`cancelled`, held back until the PID marker came (or stderr began without one)."""
        return held_for_pid(cancelled, lambda: self.waiting)

    def line(self, session_pid: Any) -> str | None:
        """The kill command line; None when it needs a PID that never came."""
        if self.kill is None or "{pid}" not in self.kill:
            return self.kill
        pid = self.pid if self.pid is not None else session_pid
        return None if pid is None else self.kill.replace("{pid}", str(int(pid)))

    def run(self, conn: SshConnection, session_pid: Any, timeout: float) -> None:
        """Kill the command of a caller that is gone: nobody to tell of a failure but the log."""
        if self.kill is None:
            return
        line = self.line(session_pid)
        if line is None:
            log.warning("no PID seen; cannot kill the command of a caller that left")
            return
        try:
            conn.exec(line, timeout=timeout)
        except Exception:
            log.warning("cannot kill the command of a caller that left", exc_info=True)


def gone(client: socket.socket) -> bool:
    """True when the caller closed its end. What it sent after the request are `C` frames (a
    cancel), read away here: a caller that cancels and then dies is gone too."""
    try:
        while client.recv(4096, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        return False  # still there, waiting for its answer
    except OSError:
        return True
    return True
