"""Many files from the VM on one SFTP session (`artifacts fetch --from vm`), within one deadline.

A download of its own per file (a channel, an sftp-server, an INIT, then STAT, OPEN, FSTAT,
READ, CLOSE, each waiting for its answer) made 1,000 small files take 3.5-5 s, nearly all of it
round trips. `FetchSession` opens one session for them all. Small files (up to `SMALL` bytes)
are fetched into memory `WINDOW` at a time, every step of each sent as soon as the answer before
it arrives, so the round trips of many files overlap: for a file of N bytes, STAT (never an OPEN
first: the VM's open of a FIFO blocks its sftp-server for good), OPEN, then FSTAT, READ of N
bytes and READ at N (EOF: nothing was appended) in one go, then CLOSE. Larger files use the
pipelined download (sftp_download) on the same session, once the small ones in flight are in.

The whole fetch has one deadline (`arm`: ssh.command_timeout plus 1 s per MiB of all its files),
checked as each piece of an answer arrives; each wait is also bounded by the stall bound.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import paramiko

from win_automation.adapters.sftp import Deadline, Progress, bounded
from win_automation.adapters.sftp_download import Copied, fetch_file
from win_automation.adapters.sftp_wire import (
    CHUNK,
    CLOSE,
    DATA,
    FSTAT,
    FX_EOF,
    HANDLE,
    OPEN,
    READ,
    READ_FLAG,
    STAT,
    STATUS,
    RemoteUnreadable,
    SftpStream,
    TooLarge,
    attributes,
    open_stream,
    refused,
    status,
    string,
)
from win_automation.adapters.ssh import SshConnection
from win_automation.errors import ConnectError, NotFoundError, WinAutomationError

SMALL = 64 * 1024
WINDOW = 32  # small files admitted and not yet taken: at most WINDOW * SMALL bytes held


@dataclass(eq=False)
class _Small:
    remote: str
    limit: int
    handle: bytes | None = None
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    waiting: int = 0  # its requests not answered yet
    eof: bool = False
    done: bool = False
    error: WinAutomationError | None = None

    def data(self) -> bytes:
        """The pieces, in order; a gap (the file changed under the reads) is an error."""
        at, parts = 0, []
        for offset in sorted(self.pieces):
            if offset != at:
                raise ConnectError(f"SFTP download of {self.remote} left a gap at {at}")
            parts.append(self.pieces[offset])
            at += len(self.pieces[offset])
        return b"".join(parts)


class FetchSession:
    """One SFTP session of `conn` for many downloads; `what` names the fetch in its errors.
    Not thread-safe: one thread drives it."""

    def __init__(self, conn: SshConnection, what: str) -> None:
        self.conn = conn
        self.what = what
        self.deadline = Deadline(conn, what)
        self._stream: SftpStream | None = None
        self.files: dict[object, _Small] = {}  # admitted, not taken yet
        self._asked: dict[int, tuple[_Small, int, int, int]] = {}  # id -> (file, kind, offset, length)
        self._out: list[bytes] = []  # requests not sent yet
        self._opened = False

    def arm(self, total: int) -> None:
        """The whole fetch's deadline, from the session's start: `total` bytes to fetch."""
        self.deadline.arm(total)

    def stream(self) -> SftpStream:
        if self._stream is None:
            self._stream = open_stream(self.conn, self.what, self.deadline)
            if not self._opened:  # the deadline runs from the first session (connect_timeout's before)
                self._opened = True
                self.deadline.start = time.monotonic()
        return self._stream

    def close(self, *, interrupted: bool = False) -> None:
        """End the session; `interrupted` (Ctrl-C, SIGTERM cut it short): without a word to
        paramiko, the connection abandoned (SshConnection.abandon)."""
        if self._stream is not None:
            if interrupted:
                self.conn.abandon(self._stream.channel)
            else:
                self._stream.channel.close()
        self._stream = None
        self.files.clear()
        self._asked.clear()
        self._out.clear()

    def download(
        self, remote: str, out: BinaryIO, progress: Progress | None, *, limit: int, target: str | None = None
    ) -> Copied:
        """Remote file `remote` into `out`, as sftp_download.download, on this session."""
        self.drain()
        try:
            return fetch_file(self.conn, self.stream(), remote, out, progress, target=target, limit=limit)
        except BaseException as exc:
            # answers still due, a handle open: the next file starts a new session
            self.close(interrupted=isinstance(exc, KeyboardInterrupt))
            raise

    # small files, many at once ------------------------------------------------------------------

    def admit(self, key: object, remote: str, limit: int) -> None:
        """Start fetching remote file `remote` (at most `limit` <= SMALL bytes), taken by `key`."""
        small = _Small(remote, limit)
        self.files[key] = small
        self._ask(small, STAT, string(remote.encode("utf-8")))

    def take(self, key: object) -> bytes:
        """The bytes of the file admitted as `key`, once all in; its own error (NotFoundError,
        RemoteUnreadable, TooLarge, a failed read) is raised here, the session's (a stall, the
        deadline, a lost connection) by whichever call meets it."""
        small = self.files[key]
        self._run(lambda: small.done)
        del self.files[key]
        if small.error is not None:
            raise small.error
        return small.data()

    def forget(self, key: object) -> None:
        """Drop a file admitted and not wanted after all (its answers are still taken in)."""
        self.files.pop(key, None)

    def drain(self) -> None:
        """Take in every answer due, so that the session is free for another exchange."""
        self._run(lambda: not self._asked)

    def _ask(self, small: _Small, kind: int, payload: bytes, offset: int = 0, length: int = 0) -> None:
        stream = self.stream()
        self._out.append(stream.pack(kind, payload))
        self._asked[stream.next_id - 1] = (small, kind, offset, length)
        small.waiting += 1

    def _read(self, small: _Small, offset: int, length: int) -> None:
        assert small.handle is not None
        self._ask(small, READ, small.handle + struct.pack(">QI", offset, length), offset, length)

    def _run(self, until: Callable[[], bool]) -> None:
        try:
            with bounded(self.conn, self.what):
                while not until():
                    stream = self.stream()
                    if self._out and not stream.size:  # sent together, just before the wait
                        stream.channel.sendall(b"".join(self._out))
                        self._out.clear()
                    if not self._asked:
                        raise AssertionError("waiting for a file with nothing asked")
                    kind, body = stream.packet()
                    (request_id,) = struct.unpack_from(">I", body, 0)
                    if (entry := self._asked.pop(request_id, None)) is None:
                        raise ConnectError(f"unexpected SFTP answer {kind} to no request ({request_id})")
                    small, asked, offset, length = entry
                    small.waiting -= 1
                    if not small.done:
                        self._answer(small, asked, kind, body, offset, length)
                    if small.done and small.handle is not None and not small.waiting:
                        self._ask(small, CLOSE, small.handle)  # its answer is taken in, not read
                        small.handle = None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise ConnectError(f"{self.what} failed: {exc}") from exc
        except BaseException as exc:
            # a stall, the deadline, Ctrl-C: answers due that nobody will take in
            self.close(interrupted=isinstance(exc, KeyboardInterrupt))
            raise

    def _answer(
        self, small: _Small, asked: int, kind: int, body: memoryview, offset: int, length: int
    ) -> None:
        try:
            if asked == STAT:
                if (size := attributes(small.remote, kind, bytes(body))) > small.limit:
                    raise self._too_large(small, size)
                name = string(small.remote.encode("utf-8"))
                self._ask(small, OPEN, name + struct.pack(">II", READ_FLAG, 0))
            elif asked == OPEN:
                if kind != HANDLE:
                    refused(small.remote, bytes(body))
                (size,) = struct.unpack_from(">I", body, 4)
                small.handle = string(bytes(body[8 : 8 + size]))
                self._ask(small, FSTAT, small.handle)
                if small.limit:  # the bytes it may have, and a READ past them: EOF, unless it grew
                    self._read(small, 0, small.limit)
                self._read(small, small.limit, CHUNK)
            elif asked == FSTAT:
                if (size := attributes(small.remote, kind, bytes(body))) > small.limit:
                    raise self._too_large(small, size)
            elif asked == READ:
                self._data(small, kind, body, offset, length)
            if small.eof and not small.waiting:
                small.done = True
        except (NotFoundError, RemoteUnreadable, TooLarge) as exc:
            small.done, small.error = True, exc

    def _data(self, small: _Small, kind: int, body: memoryview, offset: int, length: int) -> None:
        if kind == STATUS:
            code, message = status(body)
            if code != FX_EOF:
                small.done = True
                small.error = WinAutomationError(f"reading remote file {small.remote} failed: {message}")
            small.eof = True
            return
        if kind != DATA:
            raise ConnectError(f"unexpected SFTP answer {kind} to READ")
        (got,) = struct.unpack_from(">I", body, 4)
        if offset + got > small.limit:  # it grew while it was read
            raise self._too_large(small, None)
        if not got:  # nothing, and no EOF: asked again, it would answer nothing again
            small.eof = True
            return
        small.pieces[offset] = bytes(body[8 : 8 + got])
        if got < length:
            self._read(small, offset + got, length - got)  # a short read: ask for the rest

    @staticmethod
    def _too_large(small: _Small, size: int | None) -> TooLarge:
        if size is None:
            return TooLarge(f"remote file {small.remote} is over the {small.limit} bytes it may be")
        limit = small.limit
        return TooLarge(f"remote file {small.remote} is {size} bytes, over the {limit} bytes it may be", size)
