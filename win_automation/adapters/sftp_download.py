"""The verified SFTP download: pipelined, written at its offsets, hashed as it arrives.

paramiko's own `SFTPClient.get` reaches about half of OpenSSH's `sftp` throughput (its prefetch
keeps every answer in a dict and scans it on each read). `download` speaks SFTP v3 itself on a
subsystem channel of the pooled transport: it keeps `PIPELINE` READ requests of `CHUNK` bytes in
flight, parses the DATA answers from the channel's packets as they arrived (a view of one, or one
join when an answer spans several; `_ChunkPipe` replaces paramiko's copying channel buffer) and
writes them at their offset; a hashing thread (`_Hasher`) digests the same views in order, off the
read path (hashlib lets go of the GIL), so the hash costs no second pass, no copy and no time on
the reading thread. Stall bounds and the transfer deadline are win_automation.adapters.sftp's.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from win_automation.adapters.sftp import Deadline, Progress, bounded
from win_automation.adapters.ssh import SshConnection
from win_automation.errors import ConnectError, NotFoundError, StorageError, StorageFull, WinAutomationError
from win_automation.regularfiles import kind as kind_of
from win_automation.writeback import Writeback

# OpenSSH's sftp-server answers reads of up to 255 KiB whole (SFTP_MAX_READ_LENGTH); requests are
# sent in batches (one SSH packet for many READs) once half the pipeline has been answered.
CHUNK = 255 * 1024
PIPELINE = 32
# The largest packet taken from the server: ours ask for CHUNK bytes at most (OpenSSH's own client
# refuses a message over 256 KiB); a longer length is a corrupt or hostile server, not buffered.
MAX_PACKET = 1024 * 1024
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_PACKET = 128 * 1024

_INIT, _VERSION, _OPEN, _CLOSE, _READ, _FSTAT, _STAT = 1, 2, 3, 4, 5, 8, 17
_STATUS, _HANDLE, _DATA, _ATTRS = 101, 102, 103, 105
_FX_EOF, _FX_NO_SUCH_FILE, _FX_PERMISSION_DENIED = 1, 2, 3
_READ_FLAG = 0x01
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


class TooLarge(WinAutomationError):
    """A remote file over the `limit` its download allows (exit 1); `size`: its size, when its
    fstat told (None: it grew while read)."""

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


_ATTR_SIZE = 0x01
_ATTR_UIDGID = 0x02
_ATTR_PERMISSIONS = 0x04


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


class _ChunkPipe(BufferedPipe):  # type: ignore[misc]
    """paramiko's BufferedPipe (a channel's incoming data) without its copies, for the download
    channel: each data packet stays the bytes object it arrived as and is handed out whole,
    where BufferedPipe copies it into an array, then slices and copies it out again (a third of
    the download's CPU). Same locking, timeout, event and close semantics (paramiko 5.1's)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            self._chunks.append(bytes(data) if not isinstance(data, bytes) else data)
            self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                if not self._size:
                    return b""
            out = self._chunks.popleft()
            if len(out) > nbytes:
                self._chunks.appendleft(out[nbytes:])
                out = out[:nbytes]
            self._size -= len(out)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self) -> int:
        with self._lock:
            return self._size


class _SftpStream:
    """A minimal SFTP v3 client on one channel, for the pipelined download. The channel's data
    arrives as immutable bytes objects; a packet that lies within one is handed out as a view of
    it, one that spans several is joined once: either way the view stays valid, so the hashing
    thread and the reorder buffer keep it without another copy."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.chunks: collections.deque[bytes] = collections.deque()
        self.head = 0  # where the unread data starts in chunks[0]
        self.size = 0  # unread bytes in all chunks
        self.next_id = 1

    def pack(self, kind: int, payload: bytes) -> bytes:
        """One request packet with the next request id (`next_id - 1` afterwards)."""
        body = struct.pack(">BI", kind, self.next_id) + payload
        self.next_id += 1
        return struct.pack(">I", len(body)) + body

    def send(self, kind: int, payload: bytes) -> int:
        self.channel.sendall(self.pack(kind, payload))
        return self.next_id - 1

    def _fill(self, need: int) -> None:
        while self.size < need:
            data = self.channel.recv(4 * 1024 * 1024)
            if not data:
                raise ConnectError("the SFTP channel closed during the transfer")
            self.chunks.append(data)
            self.size += len(data)

    def _take(self, count: int) -> memoryview:
        """The next `count` bytes (all received): a view of their chunk, or of one joined copy."""
        first = self.chunks[0]
        if len(first) - self.head >= count:
            view = memoryview(first)[self.head : self.head + count]
            self.head += count
        else:
            pieces = []
            wanted = count
            while wanted:
                first = self.chunks[0]
                piece = min(wanted, len(first) - self.head)
                pieces.append(memoryview(first)[self.head : self.head + piece])
                self.head += piece
                wanted -= piece
                if self.head == len(first):
                    self.chunks.popleft()
                    self.head = 0
            view = memoryview(b"".join(pieces))
        if self.chunks and self.head == len(self.chunks[0]):
            self.chunks.popleft()
            self.head = 0
        self.size -= count
        return view

    def packet(self) -> tuple[int, memoryview]:
        """The next whole packet (type, body after the type byte); reads from the channel as needed."""
        self._fill(4)
        (length,) = struct.unpack(">I", self._take(4))
        if length > MAX_PACKET:
            raise ConnectError(f"the SFTP server sent a packet of {length} bytes (at most {MAX_PACKET})")
        self._fill(length)
        view = self._take(length)
        return view[0], view[1:]

    def packet_bytes(self) -> tuple[int, bytes]:
        kind, body = self.packet()
        return kind, bytes(body)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _status(body: memoryview) -> tuple[int, str]:
    code, length = struct.unpack_from(">II", body, 4)
    return code, bytes(body[12 : 12 + length]).decode("utf-8", "replace")


class RemoteUnreadable(WinAutomationError):
    """A remote path that cannot be downloaded (exit 1): `reason` why; `mode` its file type
    when it is not a regular file (a directory, a FIFO, a device)."""

    def __init__(self, message: str, reason: str, mode: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.mode = reason, mode


def _refused(remote: str, status: bytes) -> NoReturn:
    code, message = _status(memoryview(status))
    if code == _FX_NO_SUCH_FILE:
        raise NotFoundError(f"remote file {remote} does not exist")
    if code == _FX_PERMISSION_DENIED:
        raise RemoteUnreadable(f"remote file {remote}: permission denied", "permission denied")
    raise RemoteUnreadable(f"cannot open remote file {remote}: {message}", message)


def _attributes(remote: str, kind: int, attrs: bytes) -> int:
    """The size a STAT or FSTAT answer gives (-1: none); a refusal or anything but a regular
    file is an error naming `remote`."""
    if kind == _STATUS:
        _refused(remote, attrs)
    size, mode = -1, 0
    if kind == _ATTRS:
        (flags,) = struct.unpack_from(">I", attrs, 4)
        at = 8
        if flags & _ATTR_SIZE:
            (size,) = struct.unpack_from(">Q", attrs, at)
            at += 8
        if flags & _ATTR_UIDGID:
            at += 8
        if flags & _ATTR_PERMISSIONS:
            (mode,) = struct.unpack_from(">I", attrs, at)
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        what = f"not a regular file ({kind_of(mode)})"
        raise RemoteUnreadable(f"remote path {remote} is {what}", what, mode)
    return int(size)


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
    is refused (TooLarge) before more than `limit` bytes are written (as it says, or as it grows)."""
    what = f"SFTP download of {remote}"
    channel = conn.open_channel(window_size=CHANNEL_WINDOW, max_packet_size=CHANNEL_PACKET)
    try:
        with bounded(conn, what):
            channel.in_buffer = _ChunkPipe()  # before the subsystem starts: no data yet
            channel.settimeout(conn.stall_timeout)
            channel.invoke_subsystem("sftp")
    except (paramiko.SSHException, OSError, EOFError) as exc:
        channel.close()
        raise ConnectError(f"cannot start SFTP: {exc}") from exc
    try:
        if on_start is not None:
            on_start()
        with bounded(conn, what):
            return _download(
                _SftpStream(channel),
                remote,
                out,
                progress,
                Deadline(conn, what),
                cancelled,
                str(target if target is not None else getattr(out, "name", "the local file")),
                limit,
            )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(f"SFTP download of {remote} failed: {exc}") from exc
    finally:
        channel.close()


def _download(
    stream: _SftpStream,
    remote: str,
    out: BinaryIO,
    progress: Progress | None,
    deadline: Deadline,
    cancelled: Callable[[], bool] | None,
    target: str,
    limit: int | None = None,
) -> Copied:
    stream.channel.sendall(struct.pack(">IBI", 5, _INIT, 3))
    kind, _ = stream.packet_bytes()
    if kind != _VERSION:
        raise ConnectError(f"unexpected SFTP answer {kind} to INIT")
    name = _string(remote.encode("utf-8"))
    # Looked at before it is opened: the server's open(2) of a FIFO waits for a writer, for good
    # (a stall, and an sftp-server left blocked on the VM); a device's reads never end.
    stream.send(_STAT, name)
    _attributes(remote, *stream.packet_bytes())
    stream.send(_OPEN, name + struct.pack(">II", _READ_FLAG, 0))
    kind, opened = stream.packet_bytes()
    if kind == _STATUS:
        _refused(remote, opened)
    (length,) = struct.unpack_from(">I", opened, 4)
    handle = _string(opened[8 : 8 + length])
    stream.send(_FSTAT, handle)
    size = _attributes(remote, *stream.packet_bytes())  # what was opened (replaced meanwhile?)
    if limit is not None and size > limit:
        raise TooLarge(f"remote file {remote} is {size} bytes, over the {limit} bytes it may be", size)
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
            packet = stream.pack(_READ, handle + struct.pack(">QI", offset, length))
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
            deadline.check()
            if cancelled is not None and cancelled():
                raise ConnectError(f"SFTP download of {remote} was cancelled")
            kind, body = stream.packet()
            (request_id,) = struct.unpack_from(">I", body, 0)
            offset, length = pending.pop(request_id)
            if kind == _DATA:
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
            elif kind == _STATUS:
                code, message = _status(body)
                del body
                if code != _FX_EOF:
                    raise WinAutomationError(f"reading remote file {remote} failed: {message}")
                eof = True
            else:
                raise ConnectError(f"unexpected SFTP answer {kind} to READ")
        if parked:
            raise ConnectError(f"SFTP download of {remote} left gaps at {sorted(parked)[:3]}")
        stream.send(_CLOSE, handle)
        stream.packet_bytes()
    except BaseException:
        hasher.close()
        raise
    return Copied(hashed, hasher.close())
