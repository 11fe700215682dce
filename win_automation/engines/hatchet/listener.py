"""The SDK's action listener, watched, so that `win-automation worker` never ends 0 (or hangs) when
it fails.

hatchet-sdk 1.43 runs a worker's side of the engine (Register, the ListenV2 stream, heartbeats) in
a subprocess of its own (multiprocessing, spawn) and does not tell its caller when that fails:
- the engine refuses the worker's registration: the subprocess logs it, then crashes with a
  traceback (it ends a task it never created), and the worker exits 0 some 11 s later;
- the engine refuses the token later (revoked): each heartbeat logs the refusal, for good;
- the subprocess dies (killed, out of memory) while it waits for its stop event: the SDK's
  shutdown sets that multiprocessing Event and waits for good for the dead waiter to wake.

So, in the subprocess, `RefusalExit` ends it with REFUSED + the gRPC status of a refusal that
cannot pass (the token, or the registration); in the worker, `ListenerWatch` sees the subprocess
end other than by a drain's own stop and ends the worker at once: one line (`report`) and a
non-zero code, 4 for a refused token, else 3. Steps still running are left to the engine, as after
`--grace`: their results could not reach it, and it hands them to another worker when the
heartbeats stop. A drain's own stop is exit 0 (observed with 1.43): the SDK sets the stop event
and queues STOP_LOOP once the running steps are done, the listener sends their last results and
returns. So during a drain any other end (killed, refused) is a failure too: the SDK would wait
for good for results that no process sends, until `--grace` ends the worker with exit 1.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from win_automation.config import Config
from win_automation.errors import AuthError, ConnectError, WinAutomationError
from win_automation.log import redact

log = logging.getLogger(__name__)
REFUSED = 100
"""The listener's exit code for a refusal: REFUSED + the gRPC status code's number (1-16)."""
WATCH_INTERVAL = 0.5
_AUTH = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_STATUSES = {status.value[0]: status for status in grpc.StatusCode}
# what hatchet-sdk 1.43 logs (with the RpcError) when Register failed; it then gives up
_START_FAILED = "could not start action listener"


def exit_now(code: int) -> NoReturn:
    """End the worker at once: step threads may be stuck in a remote call, and the SDK's shutdown
    may wait for good on a listener that died."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    # The SDK's queues and events hold named POSIX semaphores, unlinked by these finalizers at a
    # normal exit. os._exit skips them, and multiprocessing's resource tracker then printed a
    # `leaked semaphore objects` warning (and unlinked them itself) once the listener had left.
    # Priority 0 and up: the semaphores' and the queues' own; none waits for a process or thread.
    multiprocessing.util._run_finalizers(0)  # type: ignore[attr-defined]
    os._exit(code)


class RefusalExit(logging.Handler):
    """In the listener subprocess: a refusal the SDK only logs ends the subprocess, after the log
    line (this handler is added after the project's own)."""

    def emit(self, record: logging.LogRecord) -> None:
        if multiprocessing.parent_process() is None:  # the worker itself (a copy of the config)
            return
        exc = record.exc_info[1] if record.exc_info else None
        status = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
        if not isinstance(status, grpc.StatusCode):
            return
        if status in _AUTH or record.getMessage() == _START_FAILED:
            exit_now(REFUSED + status.value[0])


def install_refusal_exit() -> None:
    """Add RefusalExit (the config is unpickled in the listener subprocess before it runs as a
    multiprocessing child: the handler itself checks that it is in one)."""
    logging.getLogger().addHandler(RefusalExit())


def failure(exitcode: int, pid: int | None, config: Config) -> WinAutomationError:
    """What the listener's exit code says, as the worker's one-line error."""
    stopped = f"the worker's action listener stopped: Hatchet at {config.hatchet.host_port} refused"
    status = _STATUSES.get(exitcode - REFUSED)
    if status in _AUTH:
        return AuthError(f"{stopped} the token ({status.name})")
    if status is not None:
        return ConnectError(f"{stopped} the worker ({status.name})")
    process = f"the worker's action listener (the Hatchet SDK's subprocess, pid {pid})"
    if exitcode < 0:
        return ConnectError(f"{process} was killed by {_signal_name(-exitcode)}")
    return ConnectError(f"{process} ended with exit code {exitcode}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


class ListenerWatch:
    """Checks, every WATCH_INTERVAL in a thread of its own and once more when the SDK returns
    (`finish`), whether the listener ended other than by a drain's own stop; then reports it and
    ends the process."""

    def __init__(
        self, worker: Any, draining: threading.Event, config: Config, report: Callable[[str], None]
    ) -> None:
        self._worker = worker
        self._draining = draining
        self._config = config
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            self.check()

    def _process(self) -> Any:
        # the SDK's own handle on its subprocess (1.43 has no public one that does not warn)
        return getattr(self._worker, "_action_listener_process", None)

    def check(self) -> None:
        process = self._process()
        if process is None or process.exitcode is None:
            return  # not started, or running
        if process.exitcode == 0 and self._draining.is_set():
            return  # the drain's own stop
        error = failure(process.exitcode, process.pid, self._config)
        self._report(redact(str(error)))
        exit_now(error.exit_code)

    def finish(self) -> None:
        """The last check, once the SDK returned, in this thread alone (two threads reaping the
        same child could each miss its exit code). After a drain the listener still sends the last
        results: wait for its end, so that a kill then is not exit 0 (multiprocessing would join
        it at exit anyway, and the grace timer still bounds the wait)."""
        self._stop.set()
        self._thread.join()  # if it is ending the process, this waits for that
        process = self._process()
        if self._draining.is_set() and process is not None and process.pid is not None:
            if process.exitcode is None:  # says what the worker waits for, if the engine is slow
                log.info("drained: the action listener sends the last results", extra={"op": "drain"})
            process.join()
        self.check()
