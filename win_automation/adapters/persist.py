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

Wire format, one request per connection: frames of 1 type byte, a 4-byte big-endian length and
the payload. Client: `R` (the request, JSON), `C` (cancel). Helper: `A` (accepted), `O`/`E`
(stdout/stderr bytes), `H` (heartbeat, every HEARTBEAT seconds), `X` (the outcome or the error,
JSON).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from win_automation import errors
from win_automation.adapters.execution import Chunk, ExecOutcome
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError, StorageError, WinAutomationError

PROTOCOL = 1
HEARTBEAT = 1.0
CANCEL_POLL = 0.1
_HEADER = struct.Struct(">cI")
# sun_path holds 108 bytes; longer paths are reached through /proc/self/fd/N/<name>.
_MAX_SUN_PATH = 100


# --- framing ----------------------------------------------------------------------------------
def send_frame(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None at end of stream."""
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            return None
        buf += data
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    header = recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    kind, size = _HEADER.unpack(header)
    payload = recv_exact(sock, size) if size else b""
    if payload is None:
        return None
    return kind, payload


def error_payload(exc: WinAutomationError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}


def error_from(payload: dict[str, Any]) -> WinAutomationError:
    """The helper's error as the same class (hence the same exit code) it had there."""
    cls = getattr(errors, str(payload.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, WinAutomationError)):
        cls = ConnectError
    return cls(str(payload.get("message")), exit_code=payload.get("exit_code"))


# --- where the helper lives ---------------------------------------------------------------------
def persist_dir(data_dir: Path) -> Path:
    return data_dir / "ssh-persist"


def helper_id(cfg: SSHConfig) -> str:
    """Which helper serves `cfg`: a hash of the whole section (secrets hashed, never written)."""
    fields = cfg.model_dump(mode="json")
    for name in ("password", "key_passphrase"):
        secret = getattr(cfg, name)
        if secret is not None:
            fields[name] = hashlib.sha256(secret.get_secret_value().encode()).hexdigest()
    fields.pop("persist", None)
    text = json.dumps({"protocol": PROTOCOL, "ssh": fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def socket_path(data_dir: Path, cfg: SSHConfig) -> Path:
    return persist_dir(data_dir) / f"{helper_id(cfg)}.sock"


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.lstat()
    except OSError as exc:
        raise StorageError(f"ssh.persist: cannot create {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise StorageError(
            f"ssh.persist: refusing {folder}: not a directory owned by you (set ssh.persist 0)"
        )
    if info.st_mode & 0o077:
        with contextlib.suppress(OSError):
            folder.chmod(0o700)


def check_socket(path: Path) -> bool:
    """False when there is no socket; True when it is ours (0600); StorageError otherwise."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"ssh.persist: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise StorageError(f"ssh.persist: refusing {path}: not a socket (remove it or set ssh.persist 0)")
    if info.st_uid != os.geteuid():
        raise StorageError(
            f"ssh.persist: refusing {path}: owned by uid {info.st_uid}, not by you"
            " (remove it or set ssh.persist 0)"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise StorageError(
            f"ssh.persist: refusing {path}: mode {stat.S_IMODE(info.st_mode):04o}, not 0600"
            " (remove it or set ssh.persist 0)"
        )
    return True


@contextlib.contextmanager
def sun_path(path: Path) -> Iterator[str]:
    """A path for bind()/connect(): `path` itself, or /proc/self/fd/N/<name> when too long."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def info_path(sock: Path) -> Path:
    return sock.with_suffix(".json")


def read_info(sock: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(info_path(sock).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(sock: Path, *, kill: bool) -> None:
    """Remove a helper's socket and info file; with `kill`, stop its process (SIGKILL)."""
    info = read_info(sock)
    pid = info.get("pid") if info else None
    if kill and isinstance(pid, int) and pid > 1 and _alive(pid) and _is_helper(pid, sock):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for path in (sock, info_path(sock)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _is_helper(pid: int, sock: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"persist_helper" in cmdline and sock.name.encode() in cmdline


@contextlib.contextmanager
def _locked(sock: Path) -> Iterator[None]:
    lock = sock.with_suffix(".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- starting a helper --------------------------------------------------------------------------
def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def spawn(cfg: SSHConfig, sock: Path, persist: float) -> None:
    """Start the helper for `cfg` at `sock`; return when it is connected and listening, or raise
    the error its connection attempt ended with."""
    import subprocess

    settings = cfg.model_dump(mode="json")
    settings["password"] = _secret(cfg.password)
    settings["key_passphrase"] = _secret(cfg.key_passphrase)
    log = sock.with_suffix(".log")
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "win_automation.adapters.persist_helper", str(sock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    request = {"ssh": settings, "persist": persist}
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except OSError:
        pass
    # The helper's own connect policy: 3 attempts, each bounded by connect_timeout.
    deadline = time.monotonic() + 3 * cfg.connect_timeout + 10
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the helper and its parent
            proc.wait()
            raise ConnectError(f"the warm-connection helper for {cfg.vm_key} did not start in time")
        data = os.read(fd, 4096)
        if not data:
            break
        line += data
    proc.stdout.close()
    proc.wait(5)  # the helper forked away from it at once
    try:
        answer = json.loads(line) if line else {}
    except ValueError:
        answer = {}
    for record in answer.get("log") or ():  # the helper's connect retries, as if they were ours
        logging.getLogger(str(record["name"])).log(int(record["level"]), record["msg"], extra=record["extra"])
    if answer.get("ok"):
        return
    if "error" in answer:
        raise error_from(answer["error"])
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise ConnectError(
        f"the warm-connection helper for {cfg.vm_key} exited before it was ready"
        + (f": {tail[0]}" if tail else "")
    )


# --- the client ---------------------------------------------------------------------------------
class _Stale(Exception):
    """The helper is gone or does not answer: replace it and send the request again."""


class WarmConnection:
    """An Executor that runs commands through the VM's warm helper (started when needed)."""

    def __init__(self, cfg: SSHConfig, data_dir: Path, persist: float) -> None:
        self.cfg = cfg
        self.persist = persist
        self.sock = socket_path(data_dir, cfg)
        _ensure_dir(self.sock.parent)

    @property
    def stall_timeout(self) -> float:
        return max(self.cfg.connect_timeout, 2 * self.cfg.keepalive_interval)

    def _connect(self) -> socket.socket:
        if not check_socket(self.sock):
            raise _Stale
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with sun_path(self.sock) as where:
                client.connect(where)
        except OSError as exc:
            client.close()
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                raise _Stale from None
            raise ConnectError(f"cannot reach the warm-connection helper at {self.sock}: {exc}") from None
        return client

    def _ensure(self, *, replace: bool) -> None:
        """Start a helper (under the lock, unless another process just did)."""
        with _locked(self.sock):
            if not replace:
                try:
                    probe = self._connect()
                except _Stale:
                    pass
                else:
                    probe.close()
                    return
            discard(self.sock, kill=True)
            spawn(self.cfg, self.sock, self.persist)

    def _open(self, request: dict[str, Any]) -> socket.socket:
        """A connection on which the helper accepted `request` (replacing a dead helper once)."""
        for attempt in (1, 2, 3):
            try:
                client = self._connect()
            except _Stale:
                self._ensure(replace=False)
                continue
            try:
                send_frame(client, b"R", json.dumps(request).encode())
                client.settimeout(self.cfg.connect_timeout)
                frame = recv_frame(client)
                client.settimeout(None)
            except OSError:
                frame = None
            if frame is not None and frame[0] == b"A":
                return client
            client.close()
            if attempt < 3:  # nothing was run: a dead or wedged helper is replaced
                self._ensure(replace=True)
        raise ConnectError(f"the warm-connection helper for {self.cfg.vm_key} does not answer at {self.sock}")

    def _call(
        self,
        request: dict[str, Any],
        *,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        client = self._open(request)
        sent_cancel = False
        last = time.monotonic()
        try:
            while True:
                wait = CANCEL_POLL if cancelled is not None else HEARTBEAT
                if not select.select([client], [], [], wait)[0]:
                    if cancelled is not None and not sent_cancel and cancelled():
                        send_frame(client, b"C")
                        sent_cancel = True
                    if time.monotonic() - last > self.stall_timeout:
                        raise ConnectError(
                            f"the warm-connection helper for {self.cfg.vm_key} stopped answering"
                            f" for {self.stall_timeout:g}s while the command ran (not retried)"
                        )
                    continue
                try:
                    frame = recv_frame(client)
                except OSError:
                    frame = None
                if frame is None:
                    raise ConnectError(
                        f"the warm-connection helper for {self.cfg.vm_key} died while the command ran"
                        " (it may or may not have finished; not retried)"
                    )
                last = time.monotonic()
                kind, payload = frame
                if kind == b"O":
                    if on_stdout is not None:
                        on_stdout(payload)
                elif kind == b"E":
                    if on_stderr is not None:
                        on_stderr(payload)
                elif kind == b"X":
                    answer = json.loads(payload)
                    if "error" in answer:
                        raise error_from(answer["error"])
                    return dict(answer)
                if cancelled is not None and not sent_cancel and cancelled():
                    send_frame(client, b"C")
                    sent_cancel = True
        finally:
            client.close()

    def exec(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
    ) -> ExecOutcome:
        out: list[bytes] = []
        err: list[bytes] = []

        def sink(kept: list[bytes], inner: Chunk | None) -> Chunk:
            def feed(data: bytes) -> None:
                if keep:
                    kept.append(data)
                if inner is not None:
                    inner(data)

            return feed

        answer = self._call(
            {"op": "exec", "command": command, "timeout": timeout, "cancellable": cancelled is not None},
            on_stdout=sink(out, on_stdout),
            on_stderr=sink(err, on_stderr),
            cancelled=cancelled,
        )
        return ExecOutcome(
            b"".join(out),
            b"".join(err),
            answer.get("exit_status"),
            bool(answer.get("timed_out")),
            int(answer.get("duration_ms", 0)),
            cancelled=bool(answer.get("cancelled")),
        )

    def put_bytes(self, remote: str, data: bytes) -> None:
        self._call({"op": "put", "path": remote, "data": base64.b64encode(data).decode("ascii")})

    def remove(self, remote: str) -> None:
        self._call({"op": "remove", "path": remote})


# --- status and stop ----------------------------------------------------------------------------
def helpers(data_dir: Path) -> list[dict[str, Any]]:
    """The helpers recorded in the data dir: vm, pid, socket, started, alive."""
    folder = persist_dir(data_dir)
    found: list[dict[str, Any]] = []
    if not folder.is_dir():
        return found
    for sock in sorted(folder.glob("*.sock")) + sorted(
        p.with_suffix(".sock") for p in folder.glob("*.json") if not p.with_suffix(".sock").exists()
    ):
        info = read_info(sock) or {}
        pid = info.get("pid")
        alive = isinstance(pid, int) and _alive(pid) and _is_helper(pid, sock) and sock.exists()
        found.append(
            {
                "vm": info.get("vm"),
                "user": info.get("user"),
                "pid": pid,
                "socket": str(sock),
                "started": info.get("started"),
                "persist_seconds": info.get("persist"),
                "alive": bool(alive),
            }
        )
    return found


def stop_helpers(data_dir: Path, vm: str | None = None) -> list[dict[str, Any]]:
    """Stop the helpers (of `vm` only, when given); returns those stopped or cleaned up."""
    stopped = []
    for helper in helpers(data_dir):
        if vm is not None and helper["vm"] != vm:
            continue
        sock = Path(helper["socket"])
        pid = helper["pid"]
        if helper["alive"] and isinstance(pid, int):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        discard(sock, kill=True)
        stopped.append(helper)
    return stopped
