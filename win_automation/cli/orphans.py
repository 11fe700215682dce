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

from win_automation.jobs.owners import process_stopped


def hung_up(conn: socket.socket) -> bool:
    """True when the other end (the launcher) has closed the connection; reads nothing."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP)
    return bool(poller.poll(0))


def wake(children: dict[int, socket.socket]) -> None:
    """Continue each stopped child whose launcher has gone (SIGCONT), so that it ends."""
    for pid, conn in children.items():
        try:
            if hung_up(conn) and process_stopped(pid, None):
                os.kill(pid, signal.SIGCONT)
        except (OSError, ValueError):
            continue
