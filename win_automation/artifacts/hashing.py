"""sha256 of a file at the CPU's hashing rate: hashed straight from the page cache, no copy.

Reading a file copies it from the page cache (about a fifth of SHA-256's time with SHA-NI), which
caps a read-then-hash loop at ~0.8x of OpenSSL's in-memory rate. So a large file is hashed
through a sliding mmap window of WINDOW bytes (hashlib lets go of the GIL): no copy, and memory
(RSS included) stays at one window whatever the size. A mapped file that another process
truncates would kill this one (SIGBUS), so the mapping is used only under a read lease
(F_SETLEASE): whoever opens the file for writing or truncates it waits until this process lets
go, which it does before the next window, then hashes the rest with reads (and so sees the
change). Where no lease is granted (the file is open for writing, is not ours, or the file
system has none) it falls back to reads: a reader thread fills a ring of BUFFERS buffers of
CHUNK bytes while the caller's thread hashes the previous ones; small files are read inline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from io import FileIO
from pathlib import Path
from typing import Any

from win_automation.regularfiles import open_regular

CHUNK = 1 << 20
BUFFERS = 4
INLINE_BELOW = 4 * CHUNK
WINDOW = 8 << 20  # bytes mapped at a time
MAP_FROM = 2 * WINDOW  # smaller files are read: a mapping costs more than it saves


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of `path`, streamed in constant memory. Only a regular file is hashed:
    a FIFO (whose open would block) or a device (/dev/zero reads without end), also behind a
    symlink, raises NotRegularFile (win_automation.regularfiles) without being read."""
    with open_regular(path) as handle:
        try:
            size_hint = os.fstat(handle.fileno()).st_size
        except OSError:
            size_hint = 0
        digest = hashlib.sha256()
        mapped = 0
        if size_hint >= MAP_FROM:
            with _read_lease(handle.fileno()) as leased:
                if leased is not None:
                    mapped = _mapped(handle.fileno(), size_hint, digest, leased, progress)
        if mapped:
            handle.seek(mapped)  # what is left: a file that grew, or one someone wants to change
            return _inline(handle, progress, digest, mapped)
        if size_hint < INLINE_BELOW:
            return _inline(handle, progress)
        return _pipelined(handle, progress)


@contextlib.contextmanager
def _read_lease(fd: int) -> Iterator[Callable[[], bool] | None]:
    """A read lease on `fd` while the block runs: yields `held()` (False once another process
    asked to write or truncate), or None when no lease is granted. The lease break is signalled
    with SIGURG (ignored unless handled), not the default SIGIO, which would end the process."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except (OSError, AttributeError):  # EAGAIN (open for writing), EACCES (not ours), no leases
        yield None
        return
    try:
        yield lambda: bool(fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK)
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def _mapped(
    fd: int, size: int, digest: Any, held: Callable[[], bool], progress: Callable[[int], None] | None
) -> int:
    """Hash `size` bytes of `fd` into `digest` through mmap windows while the lease is held; the
    number of bytes hashed (0 when the file cannot be mapped)."""
    done = 0
    while done < size and held():
        length = min(WINDOW, size - done)
        try:
            window = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=done)
        except (OSError, ValueError):
            break  # a file system without mmap: read the rest
        with window:
            digest.update(window)
        done += length
        if progress is not None:
            progress(length)
    return done


def _inline(
    handle: FileIO, progress: Callable[[int], None] | None, digest: Any = None, size: int = 0
) -> tuple[int, str]:
    """Read and hash the rest of `handle` (into `digest`, which has hashed `size` bytes)."""
    digest = hashlib.sha256() if digest is None else digest
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):
        digest.update(view[:count])
        size += count
        if progress is not None:
            progress(count)
    return size, digest.hexdigest()


def _pipelined(handle: FileIO, progress: Callable[[int], None] | None) -> tuple[int, str]:
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(CHUNK))
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                buffer = free.get()
                count = handle.readinto(buffer) or 0
                full.put((buffer, count))
                if not count:
                    return
        except BaseException as exc:  # handed to the hashing thread, raised there
            full.put(exc)

    reader = threading.Thread(target=read, name="hash-reader", daemon=True)
    reader.start()
    digest = hashlib.sha256()
    size = 0
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buffer, count = item
            if not count:
                break
            digest.update(memoryview(buffer)[:count])
            size += count
            free.put(buffer)
            if progress is not None:
                progress(count)
    finally:
        stop.set()
        free.put(bytearray(0))  # unblocks a reader waiting for a buffer
        reader.join()
    return size, digest.hexdigest()
