"""The warm connection shared by CLI calls (as OpenSSH's ControlPersist): the client side.

The first job command for a VM starts a small background helper (win_automation.adapters.
persist_helper) that holds the authenticated SSH connection and listens on a Unix socket in the
data dir, `<data.dir>/ssh-persist/<id>.sock`; later calls, in other processes, run their commands
through it. `<id>` hashes the whole `ssh` section (and the protocol version), so a changed key,
host or user gets its own helper. This module imports neither paramiko nor anything heavy: a
command that goes through a warm helper pays no paramiko import and no SSH handshake.

- The socket must be a socket owned by this user with mode 0600 in a folder only the user may
  enter; anything else is refused with a one-line StorageError (exit 74), never used.
- Starting: under an exclusive lock on `<id>.lock` (so of two processes starting a helper at once
  one wins and the other uses it), the helper is spawned with the `ssh` section (secrets too) on
  its stdin; it connects (host-key and authentication checks, the connect retry policy) and
  answers one line: ready, or the error, which the caller raises as the same error class (the
  same message and exit code as a direct connection).
- A dead helper (connection refused, socket gone) or one that does not acknowledge a request
  within ssh.connect_timeout is replaced transparently, before the command is sent. A helper that
  dies while a command runs fails that command with ConnectError (exit 3; it may or may not have
  finished, so it is not re-sent); the next call gets a fresh helper.
- `download` (for `ssh get`) sends the open destination file with the request (SCM_RIGHTS): the
  helper writes into it, so the bytes never cross the socket; the caller checks, fsyncs, renames.

The socket, its checks and frames, starting a helper (`spawn`) and `ssh persist status|stop` are
in persist_wire.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import json
import select
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from win_automation.adapters.execution import Chunk, ExecOutcome, Executor, SessionSpec, collector
from win_automation.adapters.persist_wire import (
    CANCEL_POLL,
    HEARTBEAT,
    check_socket,
    discard,
    ensure_dir,
    error_from,
    lock_timeout_error,
    locked,
    recv_frame,
    send_frame,
    send_frame_fds,
    socket_path,
    spawn,
    start_budget,
    sun_path,
)
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError, UsageError
from win_automation.unixsock import MAX_FRAME

_STARTED: set[Path] = set()  # helpers this process starts as it exits

_PROGRESS = struct.Struct(">qq")


# --- the client ---------------------------------------------------------------------------------
class _Stale(Exception):
    """The helper is gone or does not answer: replace it and send the request again."""


class _NotStarted(Exception):
    """The helper died or went mute before it started the command: safe to send again."""

    def __init__(self, error: ConnectError) -> None:
        super().__init__(str(error))
        self.error = error


class _Wedged(Exception):
    """A helper listens but takes no connection (its backlog stays full): kill and replace it."""


class WarmConnection:
    """An Executor that runs commands through the VM's warm helper (started when needed)."""

    def __init__(self, cfg: SSHConfig, data_dir: Path, persist: float) -> None:
        self.cfg = cfg
        self.persist = persist
        self.sock = socket_path(data_dir, cfg)
        ensure_dir(self.sock.parent)

    @property
    def stall_timeout(self) -> float:
        return max(self.cfg.connect_timeout, 2 * self.cfg.keepalive_interval)

    def _connect(self) -> socket.socket:
        """A connection to the helper. A full backlog (a paused or swamped helper: a blocking
        connect() would wait for as long as it does not accept) is waited out for at most
        ssh.connect_timeout, then `_Wedged`."""
        if not check_socket(self.sock):
            raise _Stale
        deadline = time.monotonic() + self.cfg.connect_timeout
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)  # a full backlog: EAGAIN at once, never a blocked connect()
            try:
                with sun_path(self.sock) as where:
                    client.connect(where)
            except OSError as exc:
                client.close()
                if exc.errno == errno.EAGAIN:
                    if time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                    raise _Wedged from None
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                    raise _Stale from None
                raise ConnectError(f"cannot reach the warm-connection helper at {self.sock}: {exc}") from None
            client.setblocking(True)
            return client

    def _inode(self) -> int | None:
        try:
            return self.sock.lstat().st_ino
        except OSError:
            return None

    def available(self) -> bool:
        """True when a helper answers connections at the socket (a foreign socket: StorageError)."""
        try:
            self._connect().close()
        except _Stale:
            return False
        except _Wedged:
            return True  # there is one: the request replaces it (see _open)
        return True

    def _ensure(self, *, replace: bool, bad: int | None = None) -> None:
        """Start a helper and wait for it (a helper that finds another one serving leaves, so of
        two started at once one wins). With `replace`, the helper whose socket had inode `bad` is
        killed first, unless another caller already replaced it."""
        if replace:
            try:
                with locked(self.sock, start_budget(self.cfg)):
                    if self._inode() != bad:
                        return  # already replaced by a caller that found it dead too
                    discard(self.sock, kill=True)
            except TimeoutError:
                raise lock_timeout_error(self.sock, self.cfg) from None
        elif self.available():
            return
        spawn(self.cfg, self.sock, self.persist)

    def _open(
        self, request: dict[str, Any], fds: list[int] | None = None
    ) -> tuple[socket.socket, int | None]:
        """A connection on which the helper accepted `request` (replacing a dead helper once),
        and the inode of the helper's socket; `fds` travel with it (a `get`'s destination file)."""
        data = json.dumps(request).encode()
        if len(data) > MAX_FRAME:  # the helper would refuse it, which would look like a dead helper
            raise UsageError(
                f"the {request.get('op')} request is {len(data) >> 20} MiB, over the {MAX_FRAME >> 20} MiB"
                " the warm-connection helper takes (ssh.persist 0 runs it in this process)"
            )
        for attempt in (1, 2, 3):
            inode = self._inode()
            try:
                client = self._connect()
            except _Stale:
                self._ensure(replace=False)
                continue
            except _Wedged:
                if attempt < 3:
                    self._ensure(replace=True, bad=inode)
                continue
            try:
                if fds:
                    send_frame_fds(client, b"R", data, fds)
                else:
                    send_frame(client, b"R", data)
                client.settimeout(self.cfg.connect_timeout)
                frame = recv_frame(client)
                client.settimeout(None)
            except OSError:
                frame = None
            if frame is not None and frame[0] == b"A":
                return client, inode
            client.close()
            if attempt < 3:  # nothing was run: a dead or wedged helper is replaced
                self._ensure(replace=True, bad=inode)
        raise ConnectError(f"the warm-connection helper for {self.cfg.vm_key} does not answer at {self.sock}")

    def _call(
        self,
        request: dict[str, Any],
        *,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        fds: list[int] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """The helper's answer to `request`. A helper that dies or stops answering before it
        started the command (its `S` frame) is replaced and the request sent once more: nothing
        ran on the VM and nothing was written to `fds`. After `S`, such a fault is final."""
        for attempt in (1, 2):
            client, inode = self._open(request, fds)
            try:
                return self._relay(client, request, on_stdout, on_stderr, cancelled, fds, on_progress)
            except _NotStarted as exc:
                if attempt == 2:
                    raise exc.error from None
            finally:
                client.close()
            self._ensure(replace=True, bad=inode)
        raise AssertionError("unreachable")

    def _relay(
        self,
        client: socket.socket,
        request: dict[str, Any],
        on_stdout: Chunk | None,
        on_stderr: Chunk | None,
        cancelled: Callable[[], bool] | None,
        fds: list[int] | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        during = "during the download" if request.get("op") == "get" else "while the command ran"
        sent_cancel = started = False
        last = time.monotonic()

        def fault(error: ConnectError) -> Exception:
            return error if started or sent_cancel else _NotStarted(error)

        while True:
            wait = CANCEL_POLL if cancelled is not None else HEARTBEAT
            if not select.select([client], [], [], wait)[0]:
                if cancelled is not None and not sent_cancel and cancelled():
                    send_frame(client, b"C")
                    sent_cancel = True
                if time.monotonic() - last > self.stall_timeout:
                    raise fault(
                        ConnectError(
                            f"the warm-connection helper for {self.cfg.vm_key} stopped answering"
                            f" for {self.stall_timeout:g}s {during} (not retried)"
                        )
                    )
                continue
            try:
                frame = recv_frame(client)
            except OSError:
                frame = None
            if frame is None:
                raise fault(
                    ConnectError(
                        f"the warm-connection helper for {self.cfg.vm_key} died {during}"
                        f" ({'' if fds else 'it may or may not have finished; '}not retried)"
                    )
                )
            last = time.monotonic()
            kind, payload = frame
            if kind == b"S":
                started = True
            elif kind == b"O":
                if on_stdout is not None:
                    on_stdout(payload)
            elif kind == b"E":
                if on_stderr is not None:
                    on_stderr(payload)
            elif kind == b"P":
                if on_progress is not None:
                    on_progress(*_PROGRESS.unpack(payload))
            elif kind == b"X":
                answer = json.loads(payload)
                if "error" in answer:
                    raise error_from(answer["error"])
                return dict(answer)
            if cancelled is not None and not sent_cancel and cancelled():
                send_frame(client, b"C")
                sent_cancel = True

    def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
        kill: str | None = None,
    ) -> ExecOutcome:
        """`kill`: what the helper runs should this process die mid-command (persist_orphan)."""
        request = {"op": "exec", "command": command, "kill": kill}
        return self._outcome(request, timeout, on_stdout, on_stderr, cancelled, keep)

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
    ) -> ExecOutcome:
        """The script runs in the helper's warm PowerShell session (ssh.warm_powershell)."""
        request = {"op": "session", "launch": session.launch, "bootstrap": session.bootstrap}
        request.update(kill=session.kill, script=script)
        return self._outcome(request, timeout, on_stdout, on_stderr, cancelled, keep)

    def _outcome(
        self,
        request: dict[str, Any],
        timeout: float | None,
        on_stdout: Chunk | None,
        on_stderr: Chunk | None,
        cancelled: Callable[[], bool] | None,
        keep: bool,
    ) -> ExecOutcome:
        out, out_sink = collector(keep, on_stdout)
        err, err_sink = collector(keep, on_stderr)
        answer = self._call(
            {**request, "timeout": timeout, "cancellable": cancelled is not None},
            on_stdout=out_sink,
            on_stderr=err_sink,
            cancelled=cancelled,
        )
        return ExecOutcome(
            b"".join(out),
            b"".join(err),
            answer.get("exit_status"),
            bool(answer.get("timed_out")),
            int(answer.get("duration_ms", 0)),
            cancelled=bool(answer.get("cancelled")),
            pid=answer.get("pid"),
        )

    def download(
        self,
        remote: str,
        out: int,
        *,
        target: str,
        hash_command: str,
        hash_timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Download `remote` into the open, empty file `out` (a descriptor: the helper writes it
        directly), hashing it off the read path, while the VM runs `hash_command`. Returns
        `size` and `sha256` (what was written), `remote_size`, and `outcome` (the hash command's
        exit_status and base64 stdout/stderr) or `error` (how running it failed)."""
        request = {
            "op": "get",
            "path": remote,
            "target": target,
            "hash_command": hash_command,
            "hash_timeout": hash_timeout,
            "progress": progress is not None,
        }
        return self._call(request, fds=[out], on_progress=progress)

    def put_bytes(self, remote: str, data: bytes) -> None:
        self._call({"op": "put", "path": remote, "data": base64.b64encode(data).decode("ascii")})

    def remove(self, remote: str) -> None:
        self._call({"op": "remove", "path": remote})

    def list_folder(self, folder: str) -> list[tuple[str, float]]:
        entries = self._call({"op": "list", "path": folder}).get("entries") or []
        return [(str(name), float(mtime)) for name, mtime in entries]


def shared_connection(cfg: SSHConfig, data_dir: Path, persist: float) -> Executor:
    """What a CLI call runs its commands through: the VM's warm helper when one answers; else
    this process's own connection (connected here, with the usual checks and errors, so a cold
    call costs what it did without helpers), and a helper is started in the background as this
    process exits, for the calls that follow."""
    warm = WarmConnection(cfg, data_dir, persist)
    if warm.available():
        return warm
    from win_automation.adapters.ssh import get_connection

    conn = get_connection(cfg)
    conn.transport()  # host key and authentication checked before any helper starts
    if warm.sock not in _STARTED:  # once per process, as it exits: it does not slow this call
        _STARTED.add(warm.sock)
        atexit.register(_spawn_quietly, cfg, warm.sock, persist)
    return conn


def _spawn_quietly(cfg: SSHConfig, sock: Path, persist: float) -> None:
    with contextlib.suppress(OSError):
        spawn(cfg, sock, persist, wait=False)
