"""`LiveOutput`: the caller's live-output sink of a local job, guarded against its reader.

The steps' read loops (an SSH channel, the warm helper's relay, a warm PowerShell session) call
the sink inline and look at their deadline and cancel between calls. A sink that blocks (the
reader of the CLI's stdout paused: `| less` not scrolled, Ctrl-S on the terminal, a stopped
`cat`) would keep them from both: the remote command ran on past its `--timeout` and `jobs
cancel`, and the journal said `running` until the reader came back.

So the writes happen on a writer thread of their own, fed through a bounded queue (PENDING
characters): a read loop waits for room only while its job is not cancelled and neither the
running attempt nor its command (win_automation.deadlines) is past its deadline; once one is,
what does not fit is dropped (the job stops; the artifact files keep the whole output), the loop
sees the cancel or deadline, the remote process tree is killed and the job recorded. `close()`
then waits for what is queued to be written: the process, like any Unix tool, exits when its
reader has taken its output (or gone away). While the job runs, the CLI's log lines for stderr
take the same queue (`log_line`, win_automation.log.divert): in order with the output, and a
warning written while stderr's reader is paused no longer holds the job (or the monitor thread,
its heartbeats and cancel polling) before it is recorded.

When the sink fails (the reader of `| head -c1` went away, stdout is on a full disk), nothing
more is written and the job is cancelled (so the remote command stops and its process tree is
killed, as on `jobs cancel`); the engine records it failed with `describe()` and raises the
sink's own error to the caller once the job is recorded, never leaving it `running`.
"""

from __future__ import annotations

import errno
import threading
from collections import deque

from win_automation import deadlines
from win_automation.operations.vm import Emit

PENDING = 1 << 20
"""Characters queued for the writer before a read loop waits for room."""
STOP_POLL = 0.1
"""Seconds between two looks at the cancel and the deadline while waiting for room."""


class LiveOutput:
    """`emit(stream, text)` for the steps of one job, written by a thread of its own."""

    def __init__(self, emit: Emit, cancel: threading.Event) -> None:
        self.emit = emit
        self.cancel = cancel
        self.attempt: threading.Event | None = None
        """The running step attempt's deadline (set by the engine before each attempt)."""
        self.failed: Exception | None = None
        self._pending: deque[tuple[str, str]] = deque()
        self._size = 0
        self._closed = False
        self._done = False  # the writer has ended: log lines are written directly again
        self._room = threading.Condition()
        self._writer: threading.Thread | None = None

    def _stopped(self) -> bool:
        """The job is cancelled, or the running attempt or its command is past its deadline."""
        if self.cancel.is_set() or deadlines.passed():
            return True
        return self.attempt is not None and self.attempt.is_set()

    def __call__(self, stream: str, text: str) -> None:
        with self._room:
            while self._size >= PENDING and self.failed is None and not self._closed:
                if self._stopped():
                    return  # the job stops and its reader does not read: dropped
                self._room.wait(STOP_POLL)
            if self.failed is not None or self._closed:
                return
            self._pending.append((stream, text))
            self._size += len(text)
            self._start()
            self._room.notify_all()

    def log_line(self, line: str) -> bool:
        """A log line for stderr (win_automation.log.divert), queued in order with the output;
        it never waits for room (log lines are few). False once nothing writes any more."""
        with self._room:
            if self.failed is not None or self._done:
                return False
            self._pending.append(("stderr", line))
            self._size += len(line)
            self._start()
            self._room.notify_all()
        return True

    def _start(self) -> None:
        if self._writer is None:
            # not a daemon: the interpreter's exit waits for it, rather than dying on the
            # stdout lock it holds (the caller's output is written or fails, never lost)
            self._writer = threading.Thread(target=self._write, name="live-output")
            self._writer.start()

    def _write(self) -> None:
        while True:
            with self._room:
                while not self._pending and not self._closed:
                    self._room.wait()
                if not self._pending:
                    self._done = True
                    return
                stream, text = self._pending.popleft()
            try:
                self.emit(stream, text)
            except Exception as exc:
                with self._room:
                    self.failed = exc
                    self._done = True
                    self._pending.clear()
                    self._size = 0
                    self._room.notify_all()
                self.cancel.set()
                return
            with self._room:
                self._size -= len(text)
                self._room.notify_all()

    def close(self, *, discard: bool = False) -> None:
        """No more output; wait until what is queued is written (or, `discard`: drop it, e.g. on
        Ctrl-C, and do not wait)."""
        with self._room:
            self._closed = True
            if discard:
                self._pending.clear()
                self._size = 0
            self._room.notify_all()
        if self._writer is not None and not discard:
            self._writer.join()

    def describe(self) -> str:
        failed = self.failed
        why = failed.strerror if isinstance(failed, OSError) and failed.strerror else str(failed)
        return f"the live output could not be written ({why}); the command was stopped"

    def exit_code(self) -> int:
        failed = self.failed
        return 74 if isinstance(failed, OSError) and failed.errno in _OUTPUT_FULL else 1


_OUTPUT_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""An output error the CLI exits 74 for (a closed pipe is 1)."""
