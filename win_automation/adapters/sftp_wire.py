"""SFTP v3 on a subsystem channel of the pooled connection, spoken directly (the verified
download, win_automation.adapters.sftp_download, and the many-file fetch, sftp_fetch).

`open_stream` starts the SFTP session (one channel, one INIT); `SftpStream` packs requests and
parses the answers from the channel's packets as they arrived (a view of one, or one join when
an answer spans several; `ChunkPipe` replaces paramiko's copying channel buffer). Every wait for
the VM is bounded twice: by the stall bound (the channel's timeout: a TimeoutError, which
`sftp.bounded` turns into a ConnectError) and by the stream's `deadline`, checked as each piece
arrives, so a VM that trickles bytes cannot hold a packet open past it (OperationTimeout).
"""

from __future__ import annotations

import collections
import stat
import struct
import time
from typing import NoReturn

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from win_automation.adapters.sftp import Deadline, bounded
from win_automation.adapters.ssh import SshConnection
from win_automation.adapters.ssh_liveness import lost
from win_automation.errors import ConnectError, NotFoundError, WinAutomationError
from win_automation.regularfiles import kind as kind_of

# OpenSSH's sftp-server answers reads of up to 255 KiB whole (SFTP_MAX_READ_LENGTH); requests are
# sent in batches (one SSH packet for many READs) once half the pipeline has been answered.
CHUNK = 255 * 1024
PIPELINE = 32
# The largest packet taken from the server: ours ask for CHUNK bytes at most (OpenSSH's own client
# refuses a message over 256 KiB); a longer length is a corrupt or hostile server, not buffered.
MAX_PACKET = 1024 * 1024
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_PACKET = 128 * 1024

INIT, VERSION, OPEN, CLOSE, READ, FSTAT, STAT = 1, 2, 3, 4, 5, 8, 17
STATUS, HANDLE, DATA, ATTRS = 101, 102, 103, 105
FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED = 1, 2, 3
READ_FLAG = 0x01


class TooLarge(WinAutomationError):
    """A remote file over the `limit` its download allows (exit 1); `size`: its size, when its
    fstat told (None: it grew while read)."""

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


_ATTR_SIZE = 0x01
_ATTR_UIDGID = 0x02
_ATTR_PERMISSIONS = 0x04


class ChunkPipe(BufferedPipe):  # type: ignore[misc]
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


class SftpStream:
    """A minimal SFTP v3 client on one channel, for the pipelined download. The channel's data
    arrives as immutable bytes objects; a packet that lies within one is handed out as a view of
    it, one that spans several is joined once: either way the view stays valid, so the hashing
    thread and the reorder buffer keep it without another copy."""

    def __init__(self, channel: paramiko.Channel, deadline: Deadline | None = None) -> None:
        self.channel = channel
        self.chunks: collections.deque[bytes] = collections.deque()
        self.head = 0  # where the unread data starts in chunks[0]
        self.size = 0  # unread bytes in all chunks
        self.next_id = 1
        self.deadline = deadline  # checked as each piece arrives, once armed
        self.stall = channel.gettimeout()  # the channel's own bound on each wait

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
            self._bound()
            try:
                data = self.channel.recv(4 * 1024 * 1024)
            except TimeoutError:
                self._bound()  # the deadline's own wait ran out: OperationTimeout, not a stall
                raise
            if not data:  # closed by the server, or by the keepalives (ssh_liveness): which
                said = lost(self.channel.get_transport())
                raise ConnectError(f"the SFTP channel closed during the transfer: the connection {said}")
            self.chunks.append(data)
            self.size += len(data)

    def _bound(self) -> None:
        """Raise OperationTimeout once the deadline passed; else wait no longer than it leaves.
        Checked for each piece, not each packet: a VM that trickles a byte a second, never
        stalling, would hold one 255 KiB answer open for three days."""
        deadline = self.deadline
        if deadline is None or deadline.limit is None:
            return
        deadline.check()
        left = deadline.limit - (time.monotonic() - deadline.start)
        if self.stall is None or left < self.stall:
            self.channel.settimeout(max(left, 0) + 0.01)  # then check() says it passed
        elif self.channel.gettimeout() != self.stall:
            self.channel.settimeout(self.stall)

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


def string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def status(body: memoryview) -> tuple[int, str]:
    code, length = struct.unpack_from(">II", body, 4)
    return code, bytes(body[12 : 12 + length]).decode("utf-8", "replace")


class RemoteUnreadable(WinAutomationError):
    """A remote path that cannot be downloaded (exit 1): `reason` why; `mode` its file type
    when it is not a regular file (a directory, a FIFO, a device)."""

    def __init__(self, message: str, reason: str, mode: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.mode = reason, mode


def refused(remote: str, answer: bytes) -> NoReturn:
    code, message = status(memoryview(answer))
    if code == FX_NO_SUCH_FILE:
        raise NotFoundError(f"remote file {remote} does not exist")
    if code == FX_PERMISSION_DENIED:
        raise RemoteUnreadable(f"remote file {remote}: permission denied", "permission denied")
    raise RemoteUnreadable(f"cannot open remote file {remote}: {message}", message)


def attributes(remote: str, kind: int, attrs: bytes) -> int:
    """The size a STAT or FSTAT answer gives (-1: none); a refusal or anything but a regular
    file is an error naming `remote`."""
    if kind == STATUS:
        refused(remote, attrs)
    size, mode = -1, 0
    if kind == ATTRS:
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


def open_stream(conn: SshConnection, what: str, deadline: Deadline | None = None) -> SftpStream:
    """A new SFTP session on its own channel of `conn`, initialised (INIT, VERSION); ConnectError
    when it cannot start. `what` names the transfer in a stall's error."""
    channel = conn.open_channel(window_size=CHANNEL_WINDOW, max_packet_size=CHANNEL_PACKET)
    try:
        with bounded(conn, what):
            channel.in_buffer = ChunkPipe()  # before the subsystem starts: no data yet
            channel.settimeout(conn.stall_timeout)
            channel.invoke_subsystem("sftp")
            stream = SftpStream(channel, deadline)
            channel.sendall(struct.pack(">IBI", 5, INIT, 3))
            kind, _ = stream.packet_bytes()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        channel.close()
        raise ConnectError(f"cannot start SFTP: {exc}") from exc
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: not closed (SshConnection.abandon)
        conn.abandon(channel)
        raise
    except BaseException:
        channel.close()
        raise
    if kind != VERSION:
        channel.close()
        raise ConnectError(f"unexpected SFTP answer {kind} to INIT")
    return stream
