"""sha256 of a file at the CPU's hashing rate: read in CHUNK pieces into one reused buffer.

Measured (benchmarks/jobs_bench.py, 1 GiB from the page cache, SHA-NI): this loop hashes at
~0.8x of `openssl speed`'s in-memory rate, as `openssl dgst` does on the same file, and the
copy is what makes it fast: read(2) copies the page cache through the kernel's huge-page
mapping into a buffer that stays in the CPU's cache, which SHA-256 then reads at full speed.
Hashing the same bytes in place, through an mmap of the file or from a bytearray already in
memory (4 KiB pages: the prefetcher stops at every page), ran at ~0.62x; a reader thread
filling buffers for the hashing thread at 0.67-0.76x (the bytes cross cores). The rest of the gap
is memory: `openssl speed` hashes one 1 MiB block that never leaves the cache.

Several files (`hash_files`: `artifacts verify`) hash at once, one per CPU this process may run
on: read(2) and hashlib release the GIL, so two files hash in about the time of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from win_automation.regularfiles import open_regular

CHUNK = 1 << 20
MAX_THREADS = 8
"""`hash_files`' most threads (a CHUNK buffer each): eight cores hash faster than disks read."""


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of `path`, streamed in constant memory. Only a regular file is hashed:
    a FIFO (whose open would block) or a device (/dev/zero reads without end), also behind a
    symlink, raises NotRegularFile (win_automation.regularfiles) without being read."""
    with open_regular(path) as handle:
        with contextlib.suppress(OSError):  # a cold page cache: the kernel reads further ahead
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
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


class _Stopped(Exception):
    """Raised in a hashing thread once its caller has given up (Ctrl-C, an error)."""


def _hash_or_error(path: Path, progress: Callable[[int], None] | None) -> tuple[int, str] | OSError:
    try:
        return hash_file(path, progress)
    except OSError as exc:
        return exc


def hash_files(
    paths: Sequence[Path], progress: Callable[[int], None] | None = None
) -> list[tuple[int, str] | OSError]:
    """hash_file of each path, in order, with the OSError that one raised in its place; on as
    many threads as this process has CPUs, up to MAX_THREADS (the largest files first balance
    them best: give them first). `progress` is called from those threads. An exception in the
    caller's thread (Ctrl-C) stops every thread at its next chunk before it propagates."""
    workers = min(len(paths), len(os.sched_getaffinity(0)), MAX_THREADS)
    if workers <= 1:
        return [_hash_or_error(path, progress) for path in paths]
    from concurrent.futures import ThreadPoolExecutor  # 3.5 ms of imports: not every job command

    stop = threading.Event()

    def tick(count: int) -> None:
        if stop.is_set():
            raise _Stopped
        if progress is not None:
            progress(count)

    with ThreadPoolExecutor(workers, thread_name_prefix="hash") as pool:
        futures = [pool.submit(_hash_or_error, path, tick) for path in paths]
        try:
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
