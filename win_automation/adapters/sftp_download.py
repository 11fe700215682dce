"""The verified SFTP download: pipelined, written at its offsets, hashed as it arrives.

paramiko's own `SFTPClient.get` reaches about half of OpenSSH's `sftp` throughput (its prefetch
keeps every answer in a dict and scans it on each read). `download` speaks SFTP v3 itself
(win_automation.adapters.sftp_wire) on a subsystem channel of the pooled transport: it keeps
`PIPELINE` READ requests of `CHUNK` bytes in flight, takes the DATA answers as views of the
channel's packets and writes them at their offset; a hashing thread (`_Hasher`) digests the same
views in order, off the read path (hashlib lets go of the GIL), so the hash costs no second pass,
no copy and no time on the reading thread. Stall bounds and the transfer deadline are
win_automation.adapters.sftp's. `fetch_file` is the same download on a session that many files
share (win_automation.adapters.sftp_fetch).
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import paramiko

from win_automation.adapters.sftp import Deadline, Progress, bounded
from win_automation.adapters.sftp_wire import (
    CHUNK,
    CLOSE,
    DATA,
    FSTAT,
    FX_EOF,
    OPEN,
    PIPELINE,
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
from win_automation.errors import ConnectError, StorageError, StorageFull, WinAutomationError
from win_automation.writeback import Writeback

_SftpStream = SftpStream  # the name tests reach it by
__all__ = ["Copied", "RemoteUnreadable", "TooLarge", "download", "fetch_file"]
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


@dataclass(frozen=True)
class Copied:
    size: int
    sha256: str


class _Hasher:
    """sha256 of the chunks fed to it, in order, on its own thread (at most HASH_QUEUE waiting)."""

    HASH_QUEUE = 64

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.chunks: queue.Queue[bytes | memoryview | None] = queue.Queue(self.HASH_QUEUE)
        self.thread = threading.Thread(target=self._run, name="sftp-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        update = self.digest.update
        while (chunk := self.chunks.get()) is not None:
            update(chunk)

    def feed(self, chunk: bytes | memoryview) -> None:
        self.chunks.put(chunk)

    def close(self) -> str:
        self.chunks.put(None)
        self.thread.join()
        return self.digest.hexdigest()


def download(
    conn: SshConnection,
    remote: str,
    out: BinaryIO,
    progress: Progress | None = None,
    *,
    cancelled: Callable[[], bool] | None = None,
    target: str | None = None,
    on_start: Callable[[], None] | None = None,
    limit: int | None = None,
) -> Copied:
    """Copy remote file `remote` into `out` (seekable, empty); returns its size and sha256.
    A write that fails here (disk full, ...) is a StorageError naming `target` (default: out's
    name); `cancelled()` turning true stops the transfer with a ConnectError. `on_start()` runs
    once the SFTP session is up, before anything is written to `out`. A file over `limit` bytes
    is refused (TooLarge) before more than `limit` bytes are written (as it says, or as it grows).
    It must end within the transfer deadline of its size (OperationTimeout)."""
    what = f"SFTP download of {remote}"
    stream = open_stream(conn, what, Deadline(conn, what))
    try:
        if on_start is not None:
            on_start()
        copied = fetch_file(
            conn, stream, remote, out, progress, cancelled=cancelled, target=target, limit=limit
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the channel is not closed (SshConnection.abandon)
        conn.abandon(stream.channel)
        raise
    except BaseException:
        stream.channel.close()
        raise
    stream.channel.close()
    return copied


def fetch_file(
    conn: SshConnection,
    stream: SftpStream,
    remote: str,
    out: BinaryIO,
    progress: Progress | None = None,
    *,
    cancelled: Callable[[], bool] | None = None,
    target: str | None = None,
    limit: int | None = None,
) -> Copied:
    """`download` on the open SFTP session `stream`, within its deadline (armed with this file's
    size unless it is already). After an error the session is in an unknown state (answers
    still due, a handle open): close it."""
    try:
        with bounded(conn, f"SFTP download of {remote}"):
            return _download(
                stream,
                remote,
                out,
                progress,
                cancelled,
                str(target if target is not None else getattr(out, "name", "the local file")),
                limit,
            )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(f"SFTP download of {remote} failed: {exc}") from exc


def _download(
    stream: SftpStream,
    remote: str,
    out: BinaryIO,
    progress: Progress | None,
    cancelled: Callable[[], bool] | None,
    target: str,
    limit: int | None = None,
) -> Copied:
    name = string(remote.encode("utf-8"))
    # Looked at before it is opened: the server's open(2) of a FIFO waits for a writer, for good
    # (a stall, and an sftp-server left blocked on the VM); a device's reads never end.
    stream.send(STAT, name)
    attributes(remote, *stream.packet_bytes())
    stream.send(OPEN, name + struct.pack(">II", READ_FLAG, 0))
    kind, opened = stream.packet_bytes()
    if kind == STATUS:
        refused(remote, opened)
    (length,) = struct.unpack_from(">I", opened, 4)
    handle = string(opened[8 : 8 + length])
    stream.send(FSTAT, handle)
    size = attributes(remote, *stream.packet_bytes())  # what was opened (replaced meanwhile?)
    if limit is not None and size > limit:
        raise TooLarge(f"remote file {remote} is {size} bytes, over the {limit} bytes it may be", size)
    deadline = stream.deadline
    if deadline is not None and deadline.limit is None:
        deadline.arm(size)

    hasher = _Hasher()
    try:
        pending: dict[int, tuple[int, int]] = {}  # request id -> (offset, length)
        parked: dict[int, memoryview] = {}  # data that arrived ahead of the hashing position
        next_offset = 0
        hashed = 0
        eof = False
        fd = out.fileno()
        writeback = Writeback(fd)

        def request(offset: int, length: int) -> bytes:
            packet = stream.pack(READ, handle + struct.pack(">QI", offset, length))
            pending[stream.next_id - 1] = (offset, length)
            return packet

        while True:
            if len(pending) <= PIPELINE // 2:
                batch = []
                while not eof and len(pending) < PIPELINE and (size < 0 or next_offset < size):
                    batch.append(request(next_offset, CHUNK))
                    next_offset += CHUNK
                if batch:
                    stream.channel.sendall(b"".join(batch))
            if not pending:
                break
            if deadline is not None:
                deadline.check()
            if cancelled is not None and cancelled():
                raise ConnectError(f"SFTP download of {remote} was cancelled")
            kind, body = stream.packet()
            (request_id,) = struct.unpack_from(">I", body, 0)
            offset, length = pending.pop(request_id)
            if kind == DATA:
                (got,) = struct.unpack_from(">I", body, 4)
                data = body[8 : 8 + got]
                if limit is not None and offset + got > limit:  # it grew while it was read
                    raise TooLarge(f"remote file {remote} is over the {limit} bytes it may be")
                try:
                    os.pwrite(fd, data, offset)
                except OSError as exc:  # no space, a quota, an I/O error: StorageFull, as artifacts
                    error = StorageFull if exc.errno in _FULL else StorageError
                    raise error(f"cannot write {target}: {exc.strerror or exc}") from None
                if offset == hashed:
                    hasher.feed(data)
                    hashed += got
                    while hashed in parked:
                        chunk = parked.pop(hashed)
                        hasher.feed(chunk)
                        hashed += len(chunk)
                else:
                    parked[offset] = data
                del data, body
                if got < length:  # a short read: ask for the rest
                    stream.channel.sendall(request(offset + got, length - got))
                writeback.advance(hashed)
                if progress is not None:
                    progress(hashed, size)
            elif kind == STATUS:
                code, message = status(body)
                del body
                if code != FX_EOF:
                    raise WinAutomationError(f"reading remote file {remote} failed: {message}")
                eof = True
            else:
                raise ConnectError(f"unexpected SFTP answer {kind} to READ")
        if parked:
            raise ConnectError(f"SFTP download of {remote} left gaps at {sorted(parked)[:3]}")
        stream.send(CLOSE, handle)
        stream.packet_bytes()
    except BaseException:
        hasher.close()
        raise
    return Copied(hashed, hasher.close())
