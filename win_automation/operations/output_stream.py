"""One output stream of a remote command (stdout or stderr), as win_automation.operations.ssh
reads it: decoded for live display, with the PID marker (the posix session leader's PID, printed
first) taken out and a PowerShell CLIXML block held back; written to a file as it arrives, with
only its last bytes kept in memory (TAIL_BYTES with a file, KEPT_BYTES without one).

A file may be `Capped` (ssh.max_output): past its limit nothing more is written to it and the
command is stopped, as on a write error; the file keeps its first `limit` bytes, and so does
everything else: the live display and the kept tail end there too (what is shown is what was
kept), whatever comes until the stop reaches the VM."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from win_automation.adapters.execution import PID_LINE, PID_MARKER
from win_automation.errors import WinAutomationError
from win_automation.operations import powershell
from win_automation.sizes import format_size

if TYPE_CHECKING:
    from win_automation.operations.command_result import CommandResult

TextSink = Callable[[str], None]
Files = tuple["ByteSink | None", "ByteSink | None"]
"""Where stdout and stderr are streamed as they arrive (None: kept whole in the result)."""

# What a streamed command's result keeps of each stream: enough for 64 K characters of any UTF-8.
TAIL_BYTES = 256 * 1024
# What a command's result keeps of each stream without a file (an idempotency check, a probe):
# output larger than memory (a check that prints gigabytes) must not be held whole.
KEPT_BYTES = 64 * 1024 * 1024


class ByteSink(Protocol):
    def write(self, data: bytes) -> object: ...


class OutputCapped(WinAutomationError):
    """A stream passed ssh.max_output: its command was stopped (exit 1, never retried: it would
    print as much again); its file, kept, holds the first max_output bytes. `written`: how much
    of the write that passed the cap went to the file (what fitted). `streams`: the command's
    result as far as it went (operations.ssh sets it: what the files kept, their tails)."""

    written = 0
    streams: CommandResult | None = None


class Discard:
    """A file that keeps nothing: a Capped stream that needs a cap but no file (the idempotency
    check, whose output is not kept)."""

    def write(self, data: bytes) -> object:
        return len(data)


class Capped:
    """`file`, which takes at most `limit` bytes: the write that passes it writes what fits, then
    raises OutputCapped, which OutputStream hands on to stop the command (`failures`).
    `stream` names the stream in that error, `stopped` what was stopped, `name` the file that
    holds the first `limit` bytes (None: no file)."""

    def __init__(
        self,
        file: ByteSink,
        limit: int,
        *,
        stream: str,
        name: str | None,
        stopped: str = "the command was stopped",
    ) -> None:
        self.file = file
        self.limit = limit
        self.stream = stream
        self.name = name
        self.stopped = stopped
        self.size = 0

    def write(self, data: bytes) -> object:
        room = self.limit - self.size
        if len(data) <= room:
            self.size += len(data)
            return self.file.write(data)
        if room:
            self.file.write(data[:room])
            self.size = self.limit
        shown = format_size(self.limit)
        where = "" if self.name is None else f"; {self.name} holds its first {shown}"
        capped = OutputCapped(f"{self.stream} passed ssh.max_output ({shown}): {self.stopped}{where}")
        capped.written = room
        raise capped


class OutputStream:
    """Decodes one output stream for live display; holds CLIXML and the PID marker back; writes
    it to `file` as it arrives and then keeps only the last `tail` bytes (KEPT_BYTES without a
    file)."""

    def __init__(
        self,
        sink: TextSink | None,
        *,
        pid_marker: bool,
        clixml: bool,
        file: ByteSink | None = None,
        tail: int = TAIL_BYTES,
        failures: list[Exception] | None = None,
    ) -> None:
        self.sink = sink
        self.file = file
        self.failures = [] if failures is None else failures
        """Where a write to `file` that failed goes (a full disk): the command is then stopped."""
        self.tail = tail if file is not None else KEPT_BYTES
        self.total = 0
        self.raw = bytearray()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pid: int | None = None
        self.await_marker = pid_marker
        self.await_clixml = clixml
        self.holding = False
        self.head = bytearray()
        self.capped = False

    def feed(self, data: bytes) -> None:
        if self.await_marker or self.await_clixml:
            self.head += data
            if self.await_marker:
                if len(self.head) < len(PID_MARKER) and PID_MARKER.startswith(bytes(self.head)):
                    return
                if self.head.startswith(PID_MARKER):
                    match = PID_LINE.match(self.head)
                    if match is None:
                        return
                    self.pid = int(match.group(1))
                    del self.head[: match.end()]
                self.await_marker = False
            if self.await_clixml:
                header = b"#< CLIXML"
                if len(self.head) < len(header) and header.startswith(bytes(self.head)):
                    return
                self.holding = self.head.startswith(header)
                self.await_clixml = False
            data, self.head = bytes(self.head), bytearray()
        data = self.keep(data)
        if self.sink is not None and not self.holding and data:
            text = self.decoder.decode(data)
            if text:
                self.sink(text)

    def keep(self, data: bytes) -> bytes:
        """Writes and keeps `data`; returns what of it was kept, which alone is shown live: past
        a Capped file's limit nothing more is (more comes until the stop reaches the VM)."""
        if not data or self.capped:
            return b""
        if self.file is not None:
            try:
                self.file.write(data)
            except OutputCapped as exc:  # the file holds what fitted: so does everything else
                data = data[: exc.written]
                self.capped = True
                self.file = None
                self.failures.append(exc)
            except Exception as exc:  # its disk is full: nothing more is written; the caller stops it
                self.file = None
                self.failures.append(exc)
        self.total += len(data)
        self.raw += data
        if self.tail is not None and len(self.raw) > 2 * self.tail:
            del self.raw[: len(self.raw) - self.tail]
        return data

    @property
    def truncated(self) -> bool:
        return self.total > len(self.raw)

    def text(self) -> str:
        self.keep(bytes(self.head))
        self.head = bytearray()
        raw = bytes(self.raw[-self.tail :] if self.tail is not None else self.raw)
        if self.total > len(raw):  # cut: start at a UTF-8 character boundary
            skip = 0
            while skip < min(3, len(raw)) and 0x80 <= raw[skip] < 0xC0:
                skip += 1
            raw = raw[skip:]
        return powershell.decode_output(raw)
