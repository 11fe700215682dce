"""`interruptible()`: SIGTERM and SIGHUP end a command as Ctrl-C does (KeyboardInterrupt in the
main thread), so what it was doing is undone or recorded before the exit: a local job is recorded
`interrupted`, a transfer removes its part file. A signal the caller ignored (`nohup`, `cmd &`)
stays ignored; outside the main thread nothing changes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def interruptible() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, handler)
