"""The warm-connection helper: one background process per VM that holds its SSH connection.

Started by win_automation.adapters.persist (`python -m win_automation.adapters.persist_helper
SOCKET`, the `ssh` section as JSON on stdin). It connects first (host key, authentication, the
connect retry policy) and answers one line on stdout: `{"ok": true}` or `{"error": ...}` with the
error's class, message and exit code, so the caller fails exactly as a direct connection would.
Then it listens on SOCKET (mode 0600; peers must be this user, checked with SO_PEERCRED) and runs
each request on its own thread over the one connection (reconnecting, with the host-key check,
when it dropped, e.g. the VM restarted); a `get` downloads into the file descriptor that came
with the request (persist_get). It exits when no request came for `persist` seconds, when
its socket file is removed or replaced, or on SIGTERM.
"""

from __future__ import annotations

import os
import signal

IMPORT_LIMIT = 10
"""Seconds the detached helper may take to import and read its request (0.2 s; 1-3 s on a loaded
machine), and then to start beyond its connect policy's budget: past them SIGALRM ends it,
whatever it is stuck in. A helper found spinning at 100% CPU in its first import 25 s after it
forked (once, in a full test run on a loaded machine) would have spun for good; one whose
starter paused before it wrote the request waited for good."""

if __name__ == "__main__":
    if os.fork() > 0:
        # Detached first, before any import: the starter reaps this parent at once and the
        # helper lives on, orphaned. Forked later, with threading imported, the child could spin
        # for ever in threading._after_fork (a WeakSet's _commit_removals; 3 full test runs of 8).
        os._exit(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # whatever its starter had: not ignored,
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])  # not blocked
    signal.alarm(IMPORT_LIMIT)  # its default action ends the process, in C code too

import base64
import contextlib
import json
import logging
import math
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from win_automation import infofiles, unixsock
from win_automation.adapters import persist_get
from win_automation.adapters import persist_wire as persist
from win_automation.adapters.execution import SessionSpec
from win_automation.adapters.persist_orphan import Orphan, gone
from win_automation.adapters.ssh import SshConnection, stall_seconds
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError, WinAutomationError

log = logging.getLogger("win_automation.persist_helper")
CHECK_EVERY = 1.0


class Helper:
    def __init__(self, cfg: SSHConfig, sock: Path, persist_seconds: float) -> None:
        self.cfg = cfg
        self.sock = sock
        self.persist = persist_seconds
        self.conn = SshConnection(cfg)
        self.busy = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified as each request ends
        self.until = 0.0  # when the running requests are past their deadlines (a stop's drain)
        self.stop = threading.Event()
        self.left = ""
        """Why it closed its connection under the requests still running, once it has."""

    # -- a request --------------------------------------------------------------------------
    def serve(self, client: socket.socket) -> None:
        with self.lock:
            self.busy += 1
        try:
            self._serve(client)
        except OSError:
            pass  # the caller went away
        finally:
            with self.lock:
                self.busy -= 1
                self.last = time.monotonic()
                self.idle.notify_all()
            client.close()

    def _serve(self, client: socket.socket) -> None:
        if unixsock.peer_uid(client) != os.geteuid():
            return
        client.settimeout(self.cfg.connect_timeout)  # a client that sends nothing is dropped
        try:
            frame = persist.recv_frame_fds(client)
        except TimeoutError:
            return
        if frame is None:
            return
        client.settimeout(None)
        kind, payload, fds = frame
        try:
            if kind == b"R":
                self._answer(client, json.loads(payload), fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _answer(self, client: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        limit = request.get("timeout") or request.get("hash_timeout") or self.cfg.command_timeout
        with self.lock:  # how long a stop waits for this request at most
            self.until = max(self.until, time.monotonic() + float(limit) + stall_seconds(self.cfg))
        sender = persist.FrameSender(client)
        send = sender.send
        send(b"A")
        cancelled = threading.Event()
        done = threading.Event()
        timeout = request.get("timeout")
        deadline = None if timeout is None else time.monotonic() + float(timeout)

        def offer(kind: bytes, payload: bytes = b"") -> None:
            """Output: waits for a caller that does not read (paused) only until the command's
            deadline or cancel, which the read loop must then get back to. A caller that went
            away cancels it (not a failure: its command must still be killed, see Orphan)."""
            stop = (
                cancelled.is_set
                if deadline is None
                else lambda: cancelled.is_set() or time.monotonic() >= deadline
            )
            try:
                sender.offer(kind, payload, stop)
            except OSError:
                cancelled.set()

        def hint(kind: bytes, payload: bytes = b"") -> None:
            """Heartbeats and progress: dropped when the caller is not reading."""
            sender.offer(kind, payload, lambda: True)

        def watch() -> None:  # heartbeats out; a cancel (or the caller's going away) in
            beat = time.monotonic() + persist.HEARTBEAT
            while not done.is_set():
                if not cancelled.is_set() and select.select([client], [], [], persist.CANCEL_POLL)[0]:
                    cancelled.set()  # a `C` frame, or EOF: the caller is gone
                elif cancelled.is_set() and done.wait(persist.CANCEL_POLL):
                    return
                if time.monotonic() >= beat:
                    beat = time.monotonic() + persist.HEARTBEAT
                    with contextlib.suppress(OSError):
                        hint(b"H")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            if request.get("op") == "get":
                answer = persist_get.get(self.conn, request, fds, send, hint, cancelled)
            else:
                orphan = Orphan(request)
                answer = self._run(request, send, offer, cancelled, orphan)
                if (answer.get("cancelled") or answer.get("timed_out")) and gone(client):
                    orphan.run(self.conn, answer.get("pid"), self.cfg.connect_timeout)
        except WinAutomationError as exc:
            if self.left:  # cut short as this helper left, not by the VM: said so, as `died` is
                exc = ConnectError(
                    f"the warm-connection helper for {self.cfg.vm_key} left ({self.left}): {exc}"
                )
            answer = {"error": persist.error_payload(exc)}
        except Exception as exc:  # the caller gets a one-line error, not a hang
            log.exception("request failed")
            failure = ConnectError(f"the warm-connection helper failed: {exc}")
            answer = {"error": persist.error_payload(failure)}
        finally:
            done.set()
        send(b"X", json.dumps(answer).encode())

    def _run(
        self, request: dict[str, Any], send: Any, offer: Any, cancelled: threading.Event, orphan: Orphan
    ) -> dict[str, Any]:
        """A command (or a small SFTP operation). `S` goes out just before anything reaches the
        VM: until then the caller may send the request to a fresh helper if this one fails."""
        op = request.get("op")

        def on_stderr(data: bytes) -> None:
            orphan.stderr(data)
            offer(b"E", data)

        relay: dict[str, Any] = {
            "timeout": request.get("timeout"),
            "on_stdout": lambda data: offer(b"O", data),
            "on_stderr": on_stderr,
            "cancelled": orphan.held(cancelled.is_set),
            "keep": False,
        }
        if op in ("exec", "session"):
            if op == "exec":
                outcome = self.conn.exec(str(request["command"]), on_start=lambda: send(b"S"), **relay)
            else:  # ssh.warm_powershell: the script runs in this helper's warm session
                spec = SessionSpec(str(request["launch"]), str(request["bootstrap"]), str(request["kill"]))
                script = str(request["script"])
                # `S` once an idle session answered its ping (or a new one started): only then
                # does the script go to the VM
                outcome = self.conn.run_in_session(spec, script, on_start=lambda: send(b"S"), **relay)
            return {
                "exit_status": outcome.exit_status,
                "timed_out": outcome.timed_out,
                "duration_ms": outcome.duration_ms,
                "cancelled": outcome.cancelled,
                "pid": outcome.pid,
            }
        send(b"S")
        if op == "put":
            self.conn.put_bytes(str(request["path"]), base64.b64decode(request["data"]))
            return {}
        if op == "remove":
            self.conn.remove(str(request["path"]))
            return {}
        if op == "list":
            return {"entries": self.conn.list_folder(str(request["path"]))}
        raise ConnectError(f"the warm-connection helper does not know the request {op!r}")

    # -- the process ------------------------------------------------------------------------
    def listen(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with persist.sun_path(self.sock) as where:
                server.bind(where)
        finally:
            os.umask(old)
        self.sock.chmod(0o600)
        server.listen(64)
        server.settimeout(CHECK_EVERY)
        return server

    def should_exit(self, inode: int) -> bool:
        if self.stop.is_set():
            return True
        try:
            if self.sock.lstat().st_ino != inode:
                return True  # replaced by another helper
        except FileNotFoundError:
            return True
        with self.lock:
            return self.busy == 0 and time.monotonic() - self.last > self.persist

    def run(self, server: socket.socket) -> None:
        inode = self.sock.lstat().st_ino
        while not self.should_exit(inode):
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stop.is_set():
                    break
                raise
            with self.lock:
                self.last = time.monotonic()
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()
        server.close()
        draining = persist.draining_path(self.sock, os.getpid())
        with contextlib.suppress(OSError):
            if self.sock.lstat().st_ino == inode:
                self.sock.unlink()  # new calls start a fresh helper from now on
                if self.stop.is_set() and self.busy:  # `ssh persist status` lists it draining
                    os.replace(persist.info_path(self.sock), draining)
                persist.info_path(self.sock).unlink(missing_ok=True)
        if self.stop.is_set():
            self.drain()
        draining.unlink(missing_ok=True)
        self.left = "stopped, past its drain" if self.stop.is_set() else "its socket was removed or replaced"
        self.conn.close()  # (its socket removed or replaced: it leaves at once, as documented)

    def drain(self) -> None:
        """Stopped (SIGTERM: `ssh persist stop`) while requests run: they end with their real
        results, each within its own deadline (plus the stall bound); then the helper leaves."""
        with self.lock:
            while self.busy and (left := self.until - time.monotonic()) > 0:
                self.idle.wait(left)


class _Kept(logging.Handler):
    """Keeps the warnings of the start-up (connect retries): the starter logs them as its own."""

    STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in record.__dict__.items() if k not in self.STANDARD}
        self.records.append(
            {"name": record.name, "level": record.levelno, "msg": record.getMessage(), "extra": extra}
        )


def _answer(payload: dict[str, Any]) -> None:
    """To the starter, when it still waits (a helper started in the background has none)."""
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()


def _keep_heap() -> None:
    """Let glibc keep the transfer buffers (up to 4 MiB each, 32 MiB of free heap) instead of
    mapping and zeroing fresh pages for every SSH packet: a quarter less CPU per downloaded MiB."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its defaults


def main(argv: list[str]) -> int:
    """The helper, already detached from its starter (at the top of this module)."""
    _keep_heap()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s persist-helper %(message)s")
    sock = Path(argv[0])
    request = json.loads(sys.stdin.read())
    cfg = SSHConfig(**request["ssh"])
    signal.alarm(math.ceil(persist.start_budget(cfg)) + IMPORT_LIMIT)  # serving by then
    helper = Helper(cfg, sock, float(request["persist"]))
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    info = {"pid": os.getpid(), "vm": cfg.vm_key, "user": cfg.user, "persist": helper.persist}
    try:
        with persist.locked(sock, persist.start_budget(cfg)):  # of two started at once, one serves
            if unixsock.serving(sock):
                _answer({"ok": True, "log": []})
                return 0
            try:
                helper.conn.transport()
                server = helper.listen()
                info["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                try:
                    infofiles.write_info(persist.info_path(sock), info)
                except OSError:  # a full disk: no socket left that nothing serves
                    server.close()
                    sock.unlink(missing_ok=True)
                    raise
            except WinAutomationError as exc:
                _answer({"error": persist.error_payload(exc), "log": kept.records})
                return 1
            except OSError as exc:
                error = ConnectError(f"cannot listen on {sock}: {exc}")
                _answer({"error": persist.error_payload(error), "log": kept.records})
                return 1
            finally:
                logging.getLogger().removeHandler(kept)
    except TimeoutError:  # held for good (a paused holder): else one more helper waited at each call
        error = persist.lock_timeout_error(sock, cfg)
        log.warning("%s", error)
        _answer({"error": persist.error_payload(error), "log": []})
        return 1
    signal.signal(signal.SIGTERM, lambda *_: helper.stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _answer({"ok": True, "log": kept.records})
    signal.alarm(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    helper.run(server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
