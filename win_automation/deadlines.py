"""The deadline of the operation the current thread is in, for code it calls back.

A command's read loop enforces its own deadline, but it calls the live-output sink inline; a sink
that has to wait (its reader is slow or paused) must stop waiting when the command's deadline
passes, or the loop never gets back to it. The operation sets its deadline for the time it runs:

    with deadlines.within(timeout):       # operations: running one command
        conn.exec(...)
    deadlines.passed()                    # the sink (engines): stop waiting for the reader?

Nested deadlines keep the earliest. A context variable: another thread does not see it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("win_automation_deadline", default=None)


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block with a deadline `seconds` from now (None: no deadline of its own)."""
    if seconds is None:
        yield
        return
    outer = _DEADLINE.get()
    deadline = time.monotonic() + seconds
    token = _DEADLINE.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def passed() -> bool:
    """True once the innermost operation's deadline has passed."""
    deadline = _DEADLINE.get()
    return deadline is not None and time.monotonic() >= deadline
