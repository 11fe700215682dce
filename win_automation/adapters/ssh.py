"""The SSH connection: exec, channels, SFTP, reconnects and the per-process pool (one connection
attempt, the handshake, host-key check and authentication: win_automation.adapters.ssh_connect).

`get_connection(ssh_config)` returns the process-wide `SshConnection` for (host, port, user): every
command and transfer of a process (CLI, local engine, Hatchet worker) reuses one transport, with
TCP_NODELAY on its socket (no 40 ms Nagle delay per command), keepalives that expect an answer
(win_automation.adapters.ssh_liveness), and a reconnect when it has dropped. Connecting follows
the connect retry policy (3 attempts; ConnectError and OperationTimeout only); authentication and
host-key errors are never retried.

`SshConnection.exec` runs one command: no PTY, stdin closed at once (`shutdown_write`), stdout and
stderr streamed to callbacks as they arrive (and kept whole unless `keep=False`: a caller that
streams them to files keeps memory flat), the status from `recv_exit_status()`,
and a deadline after which the channel is closed and `ExecOutcome.timed_out` is set (the caller
then kills the remote process tree; see win_automation.operations.ssh).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from win_automation.adapters.channel_reads import close_channel, read_slice
from win_automation.adapters.execution import Chunk, ExecOutcome, SessionSpec, collector
from win_automation.adapters.ssh_connect import MAX_PACKET_SIZE, WINDOW_SIZE, connect_once, target
from win_automation.adapters.ssh_liveness import lost
from win_automation.adapters.ssh_liveness import stall_seconds as stall_seconds  # the helper uses it
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError
from win_automation.log import Timer
from win_automation.retry import call_with_retry

log = logging.getLogger(__name__)

# How often a running command checks whether its job was cancelled.
CANCEL_POLL = 0.1
# The server closed the channel without an exit status (the process was killed by a signal).
NO_EXIT_STATUS = 255


# The slowest average rate a whole transfer may have beyond ssh.command_timeout.
MIN_TRANSFER_RATE = 1024 * 1024


def transfer_seconds(cfg: SSHConfig, size: int) -> float:
    """The deadline of a whole transfer of `size` bytes: ssh.command_timeout plus 1 s per MiB."""
    return cfg.command_timeout + max(size, 0) / MIN_TRANSFER_RATE


class SshConnection:
    """One persistent SSH connection to a VM, reconnected on demand; thread-safe."""

    def __init__(self, cfg: SSHConfig) -> None:
        self.cfg = cfg
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.sftp_lock = threading.RLock()  # held while a thread uses the SFTP session (sftp.shared)
        self._lock = threading.Lock()
        self._sessions: Any = None  # warm_powershell.SessionPool, made on first use
        self._abandoned = False  # the next connect is one attempt (abandon)

    @property
    def stall_timeout(self) -> float:
        return stall_seconds(self.cfg)

    def stalled(self, what: str) -> ConnectError:
        """The error for a transfer that stalled; the connection is dropped (a server that stopped
        answering one channel is not trusted with the next), so the next call reconnects."""
        log.warning(
            "transfer stalled; connection dropped",
            extra={"op": "ssh.sftp", "target": target(self.cfg), "stall_s": self.stall_timeout},
        )
        self.close()
        return ConnectError(
            f"{what} stalled: the VM sent nothing for {self.stall_timeout:g}s"
            " (the bound is ssh.connect_timeout, or two ssh.keepalive_interval when longer)"
        )

    def transport(self) -> paramiko.Transport:
        """The live transport, connecting (with retries) when there is none or it dropped."""
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            if self._transport is not None:
                log.warning(
                    "connection lost; reconnecting", extra={"op": "ssh.connect", "target": target(self.cfg)}
                )
                self._drop()
            if self._abandoned:  # the clean-up after an interrupt: one attempt, not the retries
                self._abandoned = False
                self._transport = connect_once(self.cfg)
            else:
                self._transport = call_with_retry(lambda: connect_once(self.cfg), op="ssh.connect")
            return self._transport

    def connect_now(self) -> None:
        """Connect with a single attempt, no retry (a health check: the next pass is the retry)."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._drop()
                self._transport = connect_once(self.cfg)

    def _drop(self) -> None:
        if self._sessions is not None:
            self._sessions.close()
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
        self._sftp = None
        self._transport = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def abandon(self, *also: object) -> None:
        """Drop the connection without a word to paramiko: after Ctrl-C or SIGTERM (a
        KeyboardInterrupt, win_automation.interrupts) cut one of its calls short in this thread.
        The signal's exception can land between a paramiko lock's `acquire()` and its `try`,
        leaving the lock held for good, or mid-packet: an orderly close, or the next request on
        that session, would then wait forever. The socket is shut (the transport's thread ends
        on it); the objects are kept out of the garbage collector's reach (a collected channel
        or SFTP file closes itself, through those locks: `also` names the caller's channel or
        file); the next call connects afresh, with one attempt: that is the clean-up (removing a
        part file, killing the interrupted command), and whoever pressed Ctrl-C waits for it."""
        transport = self._transport
        self._abandoned = True
        _never_freed((transport, self._sftp, self._sessions, *also))
        self._transport = self._sftp = self._sessions = None
        if transport is not None:
            transport.active = False
            sock = transport.sock
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def open_channel(self, **sizes: int) -> paramiko.Channel:
        """A new session channel (`sizes`: window_size, max_packet_size). A transport that dropped
        is reconnected; one that opens no channel within connect_timeout is mute (TCP alive, the
        server answering nothing): no command was sent on it, so it is dropped and reconnected once."""
        for attempt in (1, 2):
            transport = self.transport()
            try:
                return transport.open_session(timeout=self.cfg.connect_timeout, **sizes)
            except paramiko.ChannelException as exc:  # the server answered: refused
                raise ConnectError(f"cannot open a session on {target(self.cfg)}: {exc}") from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == 2:
                    raise ConnectError(f"cannot open a session on {target(self.cfg)}: {exc}") from exc
                if transport.is_active():
                    log.warning(
                        "connection does not answer; reconnecting",
                        extra={"op": "ssh.connect", "target": target(self.cfg)},
                    )
                    with self._lock:
                        if self._transport is transport:
                            self._drop()
        raise AssertionError("unreachable")

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session (opened once per transport; its channel as open_channel's,
        not paramiko's hour-long wait on a mute connection). Used under sftp_lock (sftp.shared)."""
        transport = self.transport()
        with self._lock:
            if self._sftp is not None and self._sftp.get_channel().get_transport() is transport:
                return self._sftp
        channel = self.open_channel(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
        try:
            channel.settimeout(self.stall_timeout)  # each request waits at most this for its answer
            channel.invoke_subsystem("sftp")
            client = paramiko.SFTPClient(channel)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise ConnectError(f"cannot start SFTP on {target(self.cfg)}: {exc}") from exc
        with self._lock:
            self._sftp = client
        return client

    def put_bytes(self, remote: str, data: bytes) -> None:
        """Write `data` to the remote file `remote` over SFTP (an uploaded script)."""
        import io

        from win_automation.adapters import sftp

        sftp.upload(self, io.BytesIO(data), remote, len(data))

    def remove(self, remote: str) -> None:
        from win_automation.adapters import sftp

        sftp.remove(self, remote)

    def list_folder(self, folder: str) -> list[tuple[str, float]]:
        from win_automation.adapters import sftp

        return sftp.list_folder(self, folder)

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
        on_start: Callable[[], None] | None = None,
    ) -> ExecOutcome:
        """Run PowerShell `script` in a warm session on this connection (win_automation.adapters.
        warm_powershell); `on_start()` runs just before the script is sent."""
        from win_automation.adapters.warm_powershell import SessionPool

        with self._lock:
            if self._sessions is None:
                self._sessions = SessionPool(self)
            pool = self._sessions
        try:
            outcome: ExecOutcome = pool.run(
                session,
                script,
                timeout=timeout,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                cancelled=cancelled,
                keep=keep,
                on_start=on_start,
            )
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the session is not closed (see abandon)
            self.abandon()
            raise
        return outcome

    @staticmethod
    def _alive(channel: paramiko.Channel) -> bool:
        transport = channel.get_transport()
        return transport is not None and bool(transport.is_active())

    def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
        on_start: Callable[[], None] | None = None,
    ) -> ExecOutcome:
        """Run `command` (no PTY); stream its output (kept in the outcome when `keep`); stop
        waiting at the deadline, or within CANCEL_POLL seconds of `cancelled()` turning true
        (`ExecOutcome.cancelled`). `on_start()` runs just before the command is sent."""
        with Timer() as timer:
            channel = None
            try:
                channel = self.open_channel()
                if on_start is not None:
                    on_start()
                outcome = self._run(channel, command, timeout, on_stdout, on_stderr, cancelled, keep)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: nothing of it is closed (see abandon)
                self.abandon(channel)
                channel = None
                raise
            finally:
                # on a transport that just died, paramiko's close raises (EOFError): that must
                # replace neither the outcome nor the error that ended the command
                if channel is not None:
                    with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                        close_channel(channel)
        outcome.duration_ms = timer.ms
        return outcome

    def _run(
        self,
        channel: paramiko.Channel,
        command: str,
        timeout: float | None,
        on_stdout: Chunk | None,
        on_stderr: Chunk | None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
    ) -> ExecOutcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            channel.exec_command(command)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"cannot start the command on {target(self.cfg)}: {exc}") from exc
        out, out_sink = collector(keep, on_stdout)
        err, err_sink = collector(keep, on_stderr)
        streams = (
            (channel.recv_ready, channel.recv, out_sink),
            (channel.recv_stderr_ready, channel.recv_stderr, err_sink),
        )
        fd = channel.fileno()
        timed_out = stopped = False
        poll = 1.0 if cancelled is None else CANCEL_POLL
        while True:
            finished = channel.eof_received or channel.closed
            emptied = read_slice(streams)
            if finished:
                if emptied:
                    break
                continue  # what came before the end: finite
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            if cancelled is not None and cancelled():
                stopped = True
                break
            if emptied:
                select.select([fd], [], [], poll if remaining is None else min(remaining, poll))
        if stopped:
            return ExecOutcome(b"".join(out), b"".join(err), None, False, 0, cancelled=True)
        status: int | None = None
        if not timed_out:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if channel.status_event.wait(remaining):
                status = channel.recv_exit_status()
            elif self._alive(channel):
                timed_out = True
        if not timed_out and (status is None or status == -1):
            if not self._alive(channel):
                how = lost(channel.get_transport())
                raise ConnectError(
                    f"the connection to {target(self.cfg)} {how} while the command ran "
                    "(it may or may not have finished; not retried)"
                )
            status = NO_EXIT_STATUS
        return ExecOutcome(b"".join(out), b"".join(err), status, timed_out, 0)


_POOL: dict[tuple[str, int, str], SshConnection] = {}
_POOL_LOCK = threading.Lock()


def get_connection(cfg: SSHConfig) -> SshConnection:
    """The process-wide connection for (host, port, user); created on first use."""
    key = (cfg.host, cfg.port, cfg.user)
    with _POOL_LOCK:
        conn = _POOL.get(key)
        if conn is None or conn.cfg != cfg:
            if conn is not None:
                conn.close()
            conn = _POOL[key] = SshConnection(cfg)
        return conn


def close_all(*, wait: bool = True) -> None:
    """Close every pooled connection: for tests, and as the process exits (without `wait`),
    while logging still works. Left to the interpreter's teardown, a channel closed by the
    garbage collector logs (`--debug`) into a half-torn-down logging module (`--- Logging error
    ---` blocks); at exit, one that another thread holds (a connect under way) is left as it is,
    so the exit does not wait for it."""
    if not _POOL_LOCK.acquire(blocking=wait):
        return
    try:
        for conn in _POOL.values():
            if conn._lock.acquire(blocking=wait):
                try:
                    conn._drop()
                finally:
                    conn._lock.release()
        _POOL.clear()
    finally:
        _POOL_LOCK.release()


atexit.register(close_all, wait=False)

_ABANDONED: list[tuple[Any, ...]] = []


def _never_freed(dropped: tuple[Any, ...]) -> None:
    """Keep what SshConnection.abandon dropped for the whole process, its teardown included, so
    no finalizer of it ever runs. A list alone is not enough for library users (the CLI ends
    without the teardown: win_automation.cli.finish): the teardown clears each module's names,
    and freeing these then runs their finalizers, which wait for the lock held for good, so the
    process would never exit. A reference nobody owns (Py_IncRef) is never given back."""
    _ABANDONED.append(dropped)
    with contextlib.suppress(ImportError, AttributeError):  # no ctypes: the list keeps them
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(dropped))
