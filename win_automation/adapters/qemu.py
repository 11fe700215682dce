"""The QEMU monitor (QMP) connection: the only module that imports `qemu.qmp`.

    with qmp_session(Path("/run/win-automation/qmp.sock"), timeout=10.0) as qmp:
        qmp.execute("query-status")                      # {"status": "running", "running": true}

`qemu.qmp` is asyncio-only; `QmpSession` drives it on a private event loop, so callers stay
synchronous (steps run in threads with no loop of their own: the local engine, the Hatchet worker's
step threads). Each call has a deadline (`timeout`). QEMU's QMP socket serves one client at a time,
so a session is opened per operation and closed at once.

Errors are translated here, once: a missing socket, a socket nobody listens on and a dropped
connection are ConnectError (exit 3, retried by the connect policy: 3 attempts); a path that is not
a socket (a file, a FIFO, a folder) is NotASocket (exit 3, not retried); no greeting within
the deadline (another client holds the monitor, QEMU is stopped with SIGSTOP) is NoGreeting, an
OperationTimeout (exit 124) that is not retried: a silent peer stays silent; a command QEMU refuses
is a WinAutomationError (exit 1) carrying QEMU's own message. `execute(..., timeout=)` gives one
command a longer deadline than the session's (QEMU's monitor is silent while it saves or loads a
snapshot).

Answers are checked here too, since QEMU's are the only ones read: a line that is not UTF-8 or not
JSON, nested too deep, longer than the library's 10 MiB, or a `query-status`/`query-block`/
`query-jobs` answer without the fields (and JSON types) the operations read (ANSWERS) is
ServiceRefused (exit 1, not retried) naming the socket, the command and what was wrong.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import stat
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from qemu.qmp import ConnectError as QmpConnectError
from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.message import DeserializationError, Message, UnexpectedTypeError
from qemu.qmp.protocol import StateError
from qemu.qmp.qmp_client import BadReplyError, GreetingError, NegotiationError

from win_automation.errors import ConnectError, OperationTimeout, ServiceRefused, WinAutomationError
from win_automation.regularfiles import kind
from win_automation.retry import call_with_retry

log = logging.getLogger(__name__)
# qemu.qmp logs each failure at error level itself; here it becomes one translated error instead.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
T = TypeVar("T")


class NoGreeting(OperationTimeout):
    """No QMP greeting within the deadline: not retried (a stopped QEMU, or a monitor another
    client holds, does not answer the next attempt either)."""

    transient = False


class NotASocket(ConnectError):
    """Something other than a socket at the QMP path: not retried (it stays what it is)."""

    transient = False


def _not_a_socket(path: Path) -> str | None:
    """What is at `path` when something is there but not a socket ("a FIFO"...); else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return None if stat.S_ISSOCK(mode) else kind(mode)


# The answers the operations read, with the fields they use (strict JSON types; others ignored).
class _Answer(BaseModel):
    model_config = ConfigDict(strict=True)


class _Status(_Answer):
    status: str
    running: bool


class _Job(_Answer):
    id: str
    status: str
    error: str | None = None


class _Snapshot(_Answer):
    name: str
    vm_state_size: int = Field(0, alias="vm-state-size")
    date_sec: int = Field(0, alias="date-sec")
    date_nsec: int = Field(0, alias="date-nsec")
    vm_clock_sec: int = Field(0, alias="vm-clock-sec")
    vm_clock_nsec: int = Field(0, alias="vm-clock-nsec")


class _Image(_Answer):
    snapshots: list[_Snapshot] = []


class _Inserted(_Answer):
    node_name: str = Field(alias="node-name")
    ro: bool = False
    drv: str = ""
    image: _Image | None = None


class _Device(_Answer):
    device: str | None = None
    qdev: str | None = None
    inserted: _Inserted | None = None


ANSWERS: dict[str, TypeAdapter[Any]] = {
    "query-status": TypeAdapter(_Status),
    "query-jobs": TypeAdapter(list[_Job]),
    "query-block": TypeAdapter(list[_Device]),
}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_EXPECTED = {
    "model_type": "an object",
    "dict_type": "an object",
    "list_type": "an array",
    "string_type": "a string",
    "bool_type": "a boolean",
    "int_type": "an integer",
}


def _shape_problem(exc: ValidationError) -> str:
    """The first thing wrong with an answer's shape: where, and what came instead of what."""
    first = exc.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    if first["type"] == "missing":
        return f"{where} is missing"
    got = _JSON_TYPES.get(type(first["input"]), "a number")
    expected = _EXPECTED.get(first["type"])
    if expected is None:
        return f"{where or 'the answer'}: {first['msg']}"
    return f"{where + ' is ' if where else ''}{got}, not {expected}"


def _bad_answer(exc: BaseException | None, line_limit: int) -> str | None:
    """What was wrong with what QEMU sent, when that is why `exc` was raised; else None."""
    while isinstance(exc, QmpConnectError | GreetingError | NegotiationError):
        exc = exc.exc
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deep to read"
    if isinstance(exc, DeserializationError):
        return "not JSON"
    if isinstance(exc, UnexpectedTypeError):
        return "JSON that is not an object"
    if isinstance(exc, BadReplyError):
        return "neither 'return' nor 'error'"
    if isinstance(exc, KeyError | TypeError):  # a greeting without QMP's fields
        return "not a QMP greeting"
    if isinstance(exc, ValueError):  # asyncio's line limit, or an integer of too many digits
        if "chunk" in str(exc):
            return f"a line over the {line_limit >> 20} MiB a QMP message may be"
        return f"unusable JSON ({str(exc).splitlines()[0]})"
    return None


class _Client(QMPClient):
    """QEMU sends a job's event (JOB_STATUS_CHANGE) ahead of its greeting when the job ends just as
    a client connects: the monitor still counts the previous client's capabilities negotiation.
    Such messages (an event, or an answer) were meant for that client, and are passed over (seen
    in the suite: a snapshot load given up by one command, its job ending as the next connected).
    Within the greeting's timeout: a server that sends only these gives no greeting."""

    async def _recv(self) -> Message:
        message: Message = await super()._recv()
        while self._greeting is None and "QMP" not in message and _STALE.intersection(message.keys()):
            message = await super()._recv()
        return message


_STALE = frozenset({"event", "return", "error"})
"""The keys of the QMP messages QEMU may send a previous client's way ahead of a greeting."""


class QmpSession:
    """One open QMP connection; `execute` is synchronous and bounded by the session's timeout."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = _Client("win-automation")

    def _run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        timeout = self.timeout if timeout is None else timeout
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            raise OperationTimeout(
                f"QEMU monitor {self.socket_path}: no answer to {what} within {timeout:g}s"
                " (is QEMU stopped or busy with a snapshot, or is another client connected to its QMP"
                " socket?)"
            ) from None

    def _unusable(self, what: str, reason: str) -> ServiceRefused:
        return ServiceRefused(f"QEMU monitor {self.socket_path}: unusable QMP answer to {what}: {reason}")

    def connect(self) -> None:
        path = self.socket_path
        try:
            self._run(self._client.connect(str(path)), "the greeting")
        except OperationTimeout as exc:
            raise NoGreeting(str(exc)) from None
        except QmpConnectError as exc:
            if (bad := _bad_answer(exc, self._client.readbuflen)) is not None:
                raise self._unusable("the greeting", bad) from exc
            cause = exc.exc
            if isinstance(cause, OSError) and (kind := _not_a_socket(path)) is not None:
                raise NotASocket(
                    f"QEMU monitor {path}: {kind}, not a socket (check vm.qmp_socket: QEMU's -qmp unix:PATH)"
                ) from None
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

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its `return` value (checked against ANSWERS); `timeout`
        replaces the session's for this command."""
        try:
            answer = self._run(self._client.execute(command, arguments), command, timeout)
        except ExecuteError as exc:
            raise WinAutomationError(f"QEMU refused {command}: {exc}") from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            # The reader's own failure (what QEMU sent) is raised by disconnect(), not here.
            cause = self._reader_failure() if isinstance(exc, ExecInterruptedError | StateError) else exc
            if (bad := _bad_answer(cause, self._client.readbuflen)) is not None:
                raise self._unusable(command, bad) from exc
            raise ConnectError(f"QEMU monitor {self.socket_path}: lost during {command}: {exc}") from exc
        if command in ANSWERS:
            try:
                ANSWERS[command].validate_python(answer)
            except ValidationError as exc:
                raise self._unusable(command, _shape_problem(exc)) from None
        return answer

    def _reader_failure(self) -> BaseException | None:
        """Why the connection's reader stopped (None when it did not fail)."""
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), self.timeout))
        except Exception as exc:
            return exc
        return None

    def sleep(self, seconds: float) -> None:
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        """Disconnect; never raises: disconnect() re-raises whatever stopped the reader (an answer
        that was not UTF-8, say), which `execute` has already reported."""
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), self.timeout))
        except Exception:
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
