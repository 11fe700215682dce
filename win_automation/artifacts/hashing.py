"""sha256 of a file at the CPU's hashing rate: the reads run on a second thread, off the hash.

Reading a file costs a copy from the page cache (about a fifth of SHA-256's time with SHA-NI);
done in turn with the hashing, it caps the rate at ~0.8x of OpenSSL's in-memory figure. Here a
reader thread fills a ring of BUFFERS buffers of CHUNK bytes while the caller's thread hashes the
previous ones (both let go of the GIL), so the wall-clock rate is the hash's alone when a second
core is free. Memory stays at BUFFERS x CHUNK whatever the file's size; small files are read
inline (a thread costs more than it saves).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from io import FileIO
from pathlib import Path

CHUNK = 1 << 20
BUFFERS = 4
INLINE_BELOW = 4 * CHUNK


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of `path`, streamed through a constant-size ring of buffers."""
    with path.open("rb", buffering=0) as handle:
        try:
            size_hint = os.fstat(handle.fileno()).st_size
        except OSError:
            size_hint = 0
        if size_hint < INLINE_BELOW:
            return _inline(handle, progress)
        return _pipelined(handle, progress)


def _inline(handle: FileIO, progress: Callable[[int], None] | None) -> tuple[int, str]:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
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
