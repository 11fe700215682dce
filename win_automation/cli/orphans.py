"""Served children that are stopped (SIGSTOP) when their launcher goes away.

A child of the warm CLI process (win_automation.cli.server) turns its launcher's going away
into SIGTERM, which ends its job as `interrupted`; but a stopped child cannot see it, and would
stay stopped for good, its job `running` until the journal's heartbeat expires and the server
kept alive by it. A process stopped by itself would have died with the launcher (it is the
launcher), or been continued by the kernel when its terminal hung up; so the server continues
such a child (its launcher's socket hung up, the child in state T), and it ends as a child
whose launcher was killed does.
"""

from __future__ import annotations

import os
import select
import signal
import socket


def hung_up(conn: socket.socket) -> bool:
    """True when the other end (the launcher) has closed the connection; reads nothing."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP)
    return bool(poller.poll(0))


def stopped(pid: int) -> bool:
    """True when `pid` is stopped by a signal (state T; not a debugger's stop, t)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[:1] == [b"T"]


def wake(children: dict[int, socket.socket]) -> None:
    """Continue each stopped child whose launcher has gone (SIGCONT), so that it ends."""
    for pid, conn in children.items():
        try:
            if hung_up(conn) and stopped(pid):
                os.kill(pid, signal.SIGCONT)
        except (OSError, ValueError):
            continue
