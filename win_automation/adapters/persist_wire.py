"""The warm-connection helper's socket: where it lives, who may use it, the frames on it, and
the helpers a data dir holds (`ssh persist status|stop`). No paramiko here (see
win_automation.adapters.persist for the client and persist_helper for the helper).

Wire format, one request per connection: frames of 1 type byte, a 4-byte big-endian length and
the payload. Client: `R` (the request, JSON), `C` (cancel). Helper: `A` (accepted), `S` (started:
the command goes to the VM next, or the download writes; before it, a helper that dies or goes
mute is replaced and the request sent again), `O`/`E` (stdout/stderr bytes), `H` (heartbeat, every
HEARTBEAT seconds), `P` (a download's progress: two big-endian int64, done and total), `X` (the
outcome or the error, JSON). A `get` request carries the open destination file with its `R` frame
(SCM_RIGHTS), so the helper writes into it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from win_automation import errors, infofiles, unixsock
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError, WinAutomationError
from win_automation.unixsock import check_socket, ensure_dir, locked, sun_path
from win_automation.unixsock import lock_path as unixsock_lock_path

__all__ = ["check_socket", "ensure_dir", "locked", "sun_path"]  # the socket checks, shared (unixsock)

# In the socket name: a helper of another protocol is never used. 2: `get` (a descriptor with R).
# 3: `S` (started). 4: `exec` names its `kill` (run when its caller went away: persist_orphan).
PROTOCOL = 4
HEARTBEAT = 1.0
CANCEL_POLL = 0.1
_HEADER = struct.Struct(">cI")


# --- framing ----------------------------------------------------------------------------------
def send_frame(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(unixsock.frame(kind, payload))


class FrameSender:
    """The helper's frames to one caller, from the request's thread and its watcher. `send`
    blocks until the frame is written (A, S, X: small, and what the caller waits for); `offer`
    (output, heartbeats, progress) waits for a caller that does not read only while `stop()` is
    false, then drops the frame: a caller whose process is paused (Ctrl-Z) must not hold the
    command past its deadline or cancel, as a blocked write would (the read loop runs the
    deadline). A frame already begun is never cut: its rest goes out before the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self._rest = memoryview(b"")

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        with self.lock:
            if self._rest:
                self.sock.sendall(self._rest)
                self._rest = memoryview(b"")
            self.sock.sendall(unixsock.frame(kind, payload))

    def offer(self, kind: bytes, payload: bytes, stop: Callable[[], bool]) -> bool:
        """Send the frame unless the caller stops reading while `stop()` is true; True when it
        went out whole."""
        with self.lock:
            if self._rest and not self._push(stop):
                return False
            self._rest = memoryview(unixsock.frame(kind, payload))
            return self._push(stop)

    def _push(self, stop: Callable[[], bool]) -> bool:
        while self._rest:
            try:
                self._rest = self._rest[self.sock.send(self._rest, socket.MSG_DONTWAIT) :]
                continue
            except BlockingIOError:
                pass
            if stop():
                return False
            select.select([], [self.sock], [], CANCEL_POLL)
        return True


def send_frame_fds(sock: socket.socket, kind: bytes, payload: bytes, fds: list[int]) -> None:
    """A frame with file descriptors attached (SCM_RIGHTS; a Unix socket only)."""
    data = unixsock.frame(kind, payload)
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_frame_fds(sock: socket.socket, max_fds: int = 1) -> tuple[bytes, bytes, list[int]] | None:
    """A frame and the file descriptors sent with it (the caller closes them)."""
    first, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
    if not first:
        return None
    try:
        try:
            rest = unixsock.recv_exact(sock, _HEADER.size - len(first))
            header = first + rest
            payload = unixsock.recv_exact(sock, unixsock.frame_size(header[1:]))
            kind = header[:1]
        except EOFError:
            raise OSError("end of stream in a frame") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return kind, payload, list(fds)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """(kind, payload), or None at the end of the stream."""
    try:
        return unixsock.recv_frame(sock)
    except EOFError:
        return None


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


def info_path(sock: Path) -> Path:
    return sock.with_suffix(".json")


HELPER_MODULE = "win_automation.adapters.persist_helper"


def draining_path(sock: Path, pid: int) -> Path:
    """Where a stopped helper that still finishes running requests says so (`ssh persist
    status`): not its info file, which the next helper on the same socket path writes."""
    return sock.with_name(f"{sock.stem}.draining-{pid}")


def read_info(sock: Path) -> dict[str, Any] | None:
    """A helper's info file (win_automation.infofiles: bounded, never blocking); None when it is
    missing or not one."""
    return infofiles.read_info(info_path(sock)) or None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid (a corrupt info file)
        return False
    except PermissionError:
        return True
    return True


def discard(sock: Path, *, kill: bool) -> None:
    """Remove a helper's socket and info file; with `kill`, stop its process (SIGKILL)."""
    info = read_info(sock)
    pid = info.get("pid") if info else None
    if kill and isinstance(pid, int) and pid > 1 and alive(pid) and is_helper(pid, sock):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for path in (sock, info_path(sock)):
        # gone already, or not ours to remove: a folder in its place, a read-only data dir
        # (`ssh persist status` still shows it; a call refuses a socket that is not one)
        with contextlib.suppress(OSError):
            path.unlink()


def is_helper(pid: int, sock: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return HELPER_MODULE.encode() in cmdline and sock.name.encode() in cmdline


# --- starting a helper --------------------------------------------------------------------------
def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def start_budget(cfg: SSHConfig) -> float:
    """Seconds a helper may take to start (its own connect policy: 3 attempts, each bounded by
    connect_timeout, and its imports): how long its starter waits for it, and how long anyone
    waits for the start-up lock it holds meanwhile."""
    return 3 * cfg.connect_timeout + 10


def lock_timeout_error(sock: Path, cfg: SSHConfig) -> ConnectError:
    return ConnectError(
        f"the warm-connection helper for {cfg.vm_key} cannot start: {unixsock_lock_path(sock)} has"
        f" been held for {start_budget(cfg):g}s by another process (paused?); end it, or run"
        " `win-automation ssh persist stop`"
    )


def spawn(cfg: SSHConfig, sock: Path, persist: float, *, wait: bool = True) -> None:
    """Start the helper for `cfg` at `sock`. With `wait`, return when it (or a helper another
    process started at the same time) is connected and listening, or raise the error its
    connection attempt ended with; without, return at once."""
    import subprocess

    settings = cfg.model_dump(mode="json")
    settings["password"] = _secret(cfg.password)
    settings["key_passphrase"] = _secret(cfg.key_passphrase)
    log = sock.with_suffix(".log")
    with infofiles.open_log(log) as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", HELPER_MODULE, str(sock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if wait else subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdin is not None
    request = {"ssh": settings, "persist": persist}
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except OSError:
        pass
    if not wait:  # as this process exits: the helper's parent forks it away and exits at once
        with warnings.catch_warnings():  # Popen warns when collected before it is waited for
            warnings.simplefilter("ignore", ResourceWarning)
            del proc  # the last reference: subprocess reaps it later (or init, once we exit)
        return
    assert proc.stdout is not None
    deadline = time.monotonic() + start_budget(cfg)
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
    tail = infofiles.last_line(log)
    raise ConnectError(
        f"the warm-connection helper for {cfg.vm_key} exited before it was ready"
        + (f": {tail}" if tail else "")
    )


# --- status and stop ----------------------------------------------------------------------------
def helpers(data_dir: Path) -> list[dict[str, Any]]:
    """The helpers recorded in the data dir: vm, pid, socket, started, alive (serving), state
    (`alive`; `draining`: stopped, finishing its running requests; `dead`)."""
    folder = persist_dir(data_dir)
    found: list[dict[str, Any]] = []
    if not folder.is_dir():
        return found
    orphans = sorted(p for p in folder.glob("*.json") if not p.with_suffix(".sock").exists())
    stopping = sorted(folder.glob("*.draining-*"))
    listed = [(sock, info_path(sock)) for sock in sorted(folder.glob("*.sock"))]
    listed += [(p.with_suffix(".sock"), p) for p in orphans]
    listed += [(folder / (p.name.partition(".draining-")[0] + ".sock"), p) for p in stopping]
    for sock, path in listed:
        info = infofiles.read_info(path)
        pid = info.get("pid")
        running = isinstance(pid, int) and alive(pid) and is_helper(pid, sock)
        if ".draining-" in path.name:
            if not (running and path.name.endswith(f".draining-{pid}")):
                continue  # left by a helper killed while it drained (`stop` removes it)
            state = "draining"
        else:
            state = "alive" if running and sock.exists() else "dead"
        found.append(
            {
                "vm": info.get("vm"),
                "user": info.get("user"),
                "pid": pid,
                "socket": str(sock),
                "started": info.get("started"),
                "persist_seconds": info.get("persist"),
                "alive": state == "alive",
                "state": state,
            }
        )
    return found


def stop_helpers(data_dir: Path, vm: str | None = None) -> list[dict[str, Any]]:
    """Stop the helpers (of `vm` only, when given, and those whose VM is unknown: an unreadable
    info file); returns those stopped or cleaned up."""
    stopped = []
    listed = helpers(data_dir)
    finishing = {draining_path(Path(h["socket"]), h["pid"]) for h in listed if h["state"] == "draining"}
    for left in set(persist_dir(data_dir).glob("*.draining-*")) - finishing:
        with contextlib.suppress(FileNotFoundError):
            left.unlink()
    for helper in listed:
        if vm is not None and helper["vm"] not in (vm, None):  # None: its info file is unreadable
            continue
        if helper["state"] == "draining":  # stopped already: it leaves once its requests end
            continue
        sock = Path(helper["socket"])
        pid = helper["pid"]
        draining = False
        if helper["alive"] and isinstance(pid, int):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)  # a paused one takes it too (not 5 s, then SIGKILL)
            deadline = time.monotonic() + 5
            while alive(pid) and sock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            # It removed its socket (takes no new request) and finishes the running ones.
            draining = alive(pid) and not sock.exists()
        discard(sock, kill=not draining)
        stopped.append(helper)
    listed_pids = {h["pid"] for h in listed}
    for pid, sock_path in unixsock.processes(persist_dir(data_dir), HELPER_MODULE).items():
        if pid in listed_pids:
            continue  # still starting (connecting to the VM: a job command starts it as it exits)
        sock = Path(sock_path)
        unixsock.terminate(pid, lambda: is_helper(pid, sock))  # noqa: B023 (called at once)
        starting = {"vm": None, "user": None, "pid": pid, "socket": sock_path, "started": None}
        stopped.append({**starting, "persist_seconds": None, "alive": False, "state": "starting"})
    return stopped
