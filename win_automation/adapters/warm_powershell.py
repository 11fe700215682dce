"""Warm PowerShell sessions (ssh.warm_powershell): long-lived `powershell.exe` processes on the VM,
each on its own channel of one SSH connection, that run one script at a time.

`SessionPool(conn)` belongs to an `SshConnection` (the warm helper's, the worker's, a library
user's). `run(spec, script, ...)` takes an idle session started with `spec` (or starts one: exec
`spec.launch`, send `spec.bootstrap` as the first stdin line, wait for its ready line, which names
its PID), sends the script as one request line and streams the replies back until both end
markers have come. The protocol (the server side is scripts/windows/Start-WarmPowerShell.ps1):

    stdin:   <nonce> <base64 of the UTF-8 script>\\n
    stdout:  \\x1ewa-ready:<pid>\\n once; per request the output, then \\x1ewa-end:<nonce>:<code>\\n
    stderr:  per request the errors, then \\x1ewa-end:<nonce>\\n
    stdin:   <nonce>\\n (a ping)       stdout: \\x1ewa-pong:<nonce>\\n

An idle session is pinged before it is sent a script: one that does not answer within
`ssh.connect_timeout` (paused, or stuck on the VM) has its process tree killed (`spec.kill`) and
is replaced, and the script runs in the new one. Nothing was sent to the stuck one but the ping,
so the script cannot run twice. A cancel while the ping waits ends the command at once (cancelled,
nothing sent; the caller kills the session's tree), as one during the script does.

The nonce is random per request, so no output can fake a marker. A session whose channel or
connection is gone is replaced before the script is sent. Past the deadline, or when cancelled,
the session is closed and dropped (the outcome names its PID: the caller kills its process tree,
as for a command of its own) and the next script gets a new session; a session that ends before
both markers came fails the script with ConnectError (exit 3), as a dropped connection does: it
may or may not have run, so it is not re-sent.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import select
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import paramiko

from win_automation.adapters.channel_reads import close_channel, read_slice
from win_automation.adapters.execution import Chunk, ExecOutcome, SessionSpec, collector
from win_automation.adapters.ssh_connect import target
from win_automation.adapters.ssh_liveness import lost
from win_automation.errors import ConnectError
from win_automation.log import Timer

if TYPE_CHECKING:
    from win_automation.adapters.ssh import SshConnection

log = logging.getLogger(__name__)

CANCEL_POLL = 0.1
# Idle sessions kept per spec; more (left by concurrent commands) are closed when they finish.
MAX_IDLE = 2
_READY = re.compile(rb"\x1ewa-ready:(\d+)\r?\n")
_STDERR_TAIL = 2000


class _Framed:
    """One output stream of a request: passes the bytes before the end marker to `sink` as they
    come (holding back what may be the start of the marker) and keeps what follows the marker."""

    def __init__(self, marker: bytes, sink: Chunk) -> None:
        self.marker = marker
        self.sink = sink
        self.held = b""
        self.value: bytes | None = None  # what stands between the marker and its line feed

    @property
    def done(self) -> bool:
        return self.value is not None

    def feed(self, data: bytes) -> None:
        if self.done:
            return  # nothing follows a marker until the next request
        buf = self.held + data
        at = buf.find(self.marker)
        if at >= 0:
            end = buf.find(b"\n", at + len(self.marker))
            if at:
                self.sink(buf[:at])
            if end < 0:
                self.held = buf[at:]
                return
            self.value = buf[at + len(self.marker) : end].rstrip(b"\r")
            self.held = b""
            return
        cut = buf.rfind(b"\x1e")
        if cut >= 0 and len(buf) - cut < len(self.marker) and self.marker.startswith(buf[cut:]):
            self.held = buf[cut:]
            buf = buf[:cut]
        else:
            self.held = b""
        if buf:
            self.sink(buf)


class Session:
    """One server process on the VM, on its own channel."""

    def __init__(self, channel: paramiko.Channel, pid: int | None = None) -> None:
        self.channel = channel
        self.pid = pid

    def alive(self) -> bool:
        channel = self.channel
        transport = channel.get_transport()
        return (
            transport is not None
            and bool(transport.is_active())
            and not channel.closed
            and not channel.eof_received
            and not channel.exit_status_ready()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            close_channel(self.channel)


class SessionPool:
    """The warm sessions of one SSH connection, by spec; thread-safe (one script per session)."""

    def __init__(self, conn: SshConnection) -> None:
        self.conn = conn
        self.idle: dict[SessionSpec, list[Session]] = {}
        self.lock = threading.Lock()

    def _take(self, spec: SessionSpec) -> Session | None:
        with self.lock:
            idle = self.idle.get(spec, [])
            while idle:
                session = idle.pop()
                if session.alive():
                    return session
                log.info(
                    "warm PowerShell session gone; replacing it",
                    extra={"op": "ssh.session", "pid": session.pid},
                )
                session.close()
        return None

    def _give_back(self, spec: SessionSpec, session: Session) -> None:
        with self.lock:
            idle = self.idle.setdefault(spec, [])
            if session.alive() and len(idle) < MAX_IDLE:
                idle.append(session)
                return
        session.close()

    def close(self) -> None:
        with self.lock:
            sessions = [s for idle in self.idle.values() for s in idle]
            self.idle.clear()
        for session in sessions:
            session.close()

    def _start(self, spec: SessionSpec, deadline: float | None) -> tuple[Session | None, bool]:
        """A new session, ready to serve; (None, True) when the deadline passed first."""
        channel = self.conn.open_channel()
        try:
            channel.exec_command(spec.launch)
            # A blank line after it: -Command - runs a statement once a line ends it for sure.
            channel.sendall(spec.bootstrap.encode("utf-8") + b"\n\n")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise ConnectError(f"cannot start a warm PowerShell session: {exc}") from exc
        out = b""
        err = b""

        def keep_out(data: bytes) -> None:
            nonlocal out
            out += data

        def keep_err(data: bytes) -> None:
            nonlocal err
            err = (err + data)[-_STDERR_TAIL:]

        streams = (
            (channel.recv_stderr_ready, channel.recv_stderr, keep_err),
            (channel.recv_ready, channel.recv, keep_out),
        )
        fd = channel.fileno()
        while True:
            emptied = read_slice(streams)
            match = _READY.search(out)
            if match is not None:
                if out[match.end() :]:
                    log.warning("the warm session wrote past its ready line", extra={"op": "ssh.session"})
                return Session(channel, int(match.group(1))), False
            out = out[-64:]
            if emptied and (channel.eof_received or channel.closed):
                status = channel.recv_exit_status() if channel.exit_status_ready() else None
                close_channel(channel)
                why = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no error output"]
                raise ConnectError(
                    f"the warm PowerShell session on {self.conn.cfg.vm_key} did not start (exit status"
                    f" {status}): {why[0]} (ssh.warm_powershell false runs each command in its own"
                    " powershell.exe)"
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                close_channel(channel)
                return None, True
            if emptied:
                select.select([fd], [], [], 1.0 if remaining is None else min(remaining, 1.0))

    def run(
        self,
        spec: SessionSpec,
        script: str,
        *,
        timeout: float | None = None,
        on_stdout: Chunk | None = None,
        on_stderr: Chunk | None = None,
        cancelled: Callable[[], bool] | None = None,
        keep: bool = True,
        on_start: Callable[[], None] | None = None,
    ) -> ExecOutcome:
        """Run `script` in a session of `spec` (an idle one that answers its ping, or a new one);
        `on_start()` runs just before the script is sent (nothing of it ran before)."""
        with Timer() as timer:
            outcome = self._run(spec, script, timeout, on_stdout, on_stderr, cancelled, keep, on_start)
        outcome.duration_ms = timer.ms
        return outcome

    def _run(
        self,
        spec: SessionSpec,
        script: str,
        timeout: float | None,
        on_stdout: Chunk | None,
        on_stderr: Chunk | None,
        cancelled: Callable[[], bool] | None,
        keep: bool,
        on_start: Callable[[], None] | None,
    ) -> ExecOutcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        nonce = uuid.uuid4().hex.encode("ascii")
        request = nonce + b" " + base64.b64encode(script.encode("utf-8")) + b"\n"
        while True:
            session = self._take(spec)
            reused = session is not None
            if session is None:
                session, late = self._start(spec, deadline)
                if session is None:
                    return ExecOutcome(b"", b"", None, late, 0)
            try:
                if reused:
                    answered, late, stopped = self._ping(session, deadline, cancelled)
                    if late or stopped:  # nothing was sent: the caller kills the session's tree
                        session.close()
                        return ExecOutcome(b"", b"", None, late, 0, cancelled=stopped, pid=session.pid)
                    if not answered:
                        self._abandon(spec, session)
                        continue
                if on_start is not None:
                    on_start()
                session.channel.sendall(request)
                break
            except (paramiko.SSHException, OSError, EOFError) as exc:
                session.close()
                if not reused:  # an idle session that died as it was taken: nothing ran, try anew
                    raise ConnectError(
                        f"cannot send the script to the warm PowerShell session: {exc}"
                    ) from exc
        out, out_sink = collector(keep, on_stdout)
        err, err_sink = collector(keep, on_stderr)
        stdout = _Framed(b"\x1ewa-end:" + nonce + b":", out_sink)
        stderr = _Framed(b"\x1ewa-end:" + nonce, err_sink)
        channel = session.channel
        streams = (
            (channel.recv_ready, channel.recv, stdout.feed),
            (channel.recv_stderr_ready, channel.recv_stderr, stderr.feed),
        )
        fd = channel.fileno()
        poll = 1.0 if cancelled is None else CANCEL_POLL
        timed_out = stopped = False
        while True:
            ended = channel.eof_received or channel.closed
            emptied = read_slice(streams)
            if stdout.done and stderr.done:
                break
            if ended and not emptied:
                continue  # what came before the end: finite
            if ended:
                session.close()
                if not self._transport_alive(channel):
                    what = f"the connection to {target(self.conn.cfg)} {lost(channel.get_transport())}"
                else:
                    what = f"the warm PowerShell session on {self.conn.cfg.vm_key} (PID {session.pid}) ended"
                raise ConnectError(
                    f"{what} while the command ran (it may or may not have finished; not retried)"
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            if cancelled is not None and cancelled():
                stopped = True
                break
            if emptied:
                select.select([fd], [], [], poll if remaining is None else min(remaining, poll))
        if timed_out or stopped:
            session.close()  # a new script gets a new session; the caller kills this one's tree
            return ExecOutcome(
                b"".join(out), b"".join(err), None, timed_out, 0, cancelled=stopped, pid=session.pid
            )
        self._give_back(spec, session)
        assert stdout.value is not None
        try:
            status = int(stdout.value)
        except ValueError:
            status = 255
        return ExecOutcome(b"".join(out), b"".join(err), status & 0xFFFFFFFF, False, 0)

    def _ping(
        self, session: Session, deadline: float | None, cancelled: Callable[[], bool] | None
    ) -> tuple[bool, bool, bool]:
        """(answered, the deadline passed first, cancelled first): whether an idle session answers
        a ping within ssh.connect_timeout; what it writes before its pong is dropped. A cancel is
        polled as while a script runs (a paused session must not hold `jobs cancel` that long)."""
        nonce = uuid.uuid4().hex.encode("ascii")
        pong = _Framed(b"\x1ewa-pong:" + nonce, lambda _: None)
        channel = session.channel
        channel.sendall(nonce + b"\n")
        bound = time.monotonic() + self.conn.cfg.connect_timeout
        fd = channel.fileno()
        streams = ((channel.recv_ready, channel.recv, pong.feed),)
        while True:
            emptied = read_slice(streams)
            if pong.done:
                return True, False, False
            if emptied and (channel.eof_received or channel.closed):
                return False, False, False
            now = time.monotonic()
            if deadline is not None and deadline <= min(now, bound):
                return False, True, False
            if cancelled is not None and cancelled():
                return False, False, True
            if now >= bound:
                return False, False, False
            end = bound if deadline is None else min(bound, deadline)
            if emptied:
                select.select([fd], [], [], min(end - now, 1.0 if cancelled is None else CANCEL_POLL))

    def _abandon(self, spec: SessionSpec, session: Session) -> None:
        """Kill and drop an idle session that did not answer its ping."""
        log.warning(
            "warm PowerShell session did not answer; killing and replacing it",
            extra={"op": "ssh.session", "pid": session.pid},
        )
        session.close()
        if session.pid is not None:
            with contextlib.suppress(Exception):
                self.conn.exec(spec.kill.format(pid=session.pid), timeout=self.conn.cfg.connect_timeout)

    @staticmethod
    def _transport_alive(channel: paramiko.Channel) -> bool:
        transport = channel.get_transport()
        return transport is not None and bool(transport.is_active())
