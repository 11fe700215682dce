"""The QEMU monitor (QMP) connection: the only module that imports `qemu.qmp`.

    with qmp_session(Path("/run/win-automation/qmp.sock"), timeout=10.0) as qmp:
        qmp.execute("query-status")                      # {"status": "running", "running": true}

`qemu.qmp` is asyncio-only; `QmpSession` drives it on a private event loop, so callers stay
synchronous (steps run in threads with no loop of their own: the local engine, the Hatchet worker's
step threads). Each call has a deadline (`timeout`). QEMU's QMP socket serves one client at a time,
so a session is opened per operation and closed at once.

Errors are translated here, once: a missing socket, a socket nobody listens on and a dropped
connection are ConnectError (exit 3, retried by the connect policy: 3 attempts); no greeting within
the deadline (another client holds the monitor, QEMU is stopped with SIGSTOP) is OperationTimeout;
a command QEMU refuses is a WinAutomationError (exit 1) carrying QEMU's own message.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError as QmpConnectError
from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError

from win_automation.errors import ConnectError, OperationTimeout, WinAutomationError
from win_automation.retry import call_with_retry

log = logging.getLogger(__name__)
# qemu.qmp logs each failure at error level itself; here it becomes one translated error instead.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
T = TypeVar("T")


class QmpSession:
    """One open QMP connection; `execute` is synchronous and bounded by the session's timeout."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("win-automation")

    def _run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except TimeoutError:
            raise OperationTimeout(
                f"QEMU monitor {self.socket_path}: no answer to {what} within {self.timeout:g}s"
                " (is QEMU stopped, or is another client connected to its QMP socket?)"
            ) from None

    def connect(self) -> None:
        path = self.socket_path
        try:
            self._run(self._client.connect(str(path)), "the greeting")
        except QmpConnectError as exc:
            cause = exc.exc
            if isinstance(cause, FileNotFoundError):
                reason = "no such socket (is the VM running? check vm.qmp_socket)"
            elif isinstance(cause, ConnectionRefusedError):
                reason = "nothing listens on it (QEMU is not running)"
            elif isinstance(cause, PermissionError):
                reason = "permission denied (run as the VM's user or group)"
            elif isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EINVAL):
                reason = "QEMU accepts no connection (stopped, or busy with another QMP client)"
            else:
                reason = str(cause) or type(cause).__name__
            raise ConnectError(f"QEMU monitor {path}: {reason}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise ConnectError(f"QEMU monitor {path}: connection failed: {exc}") from exc

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command and return its `return` value."""
        try:
            return self._run(self._client.execute(command, arguments), command)
        except ExecuteError as exc:
            raise WinAutomationError(f"QEMU refused {command}: {exc}") from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            raise ConnectError(f"QEMU monitor {self.socket_path}: lost during {command}: {exc}") from exc

    def sleep(self, seconds: float) -> None:
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), self.timeout))
        except (TimeoutError, QMPError, OSError, EOFError):
            log.debug("QMP disconnect failed", exc_info=True, extra={"op": "qmp"})
        finally:
            self._loop.close()


@contextmanager
def qmp_session(socket_path: Path, *, timeout: float) -> Iterator[QmpSession]:
    """An open QMP session (connect retried under the connect policy), closed on exit."""

    def attempt() -> QmpSession:
        session = QmpSession(socket_path, timeout)
        try:
            session.connect()
        except BaseException:
            session.close()
            raise
        return session

    session = call_with_retry(attempt, op="qmp-connect")
    try:
        yield session
    finally:
        session.close()
