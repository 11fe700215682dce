"""Starting a file's disk writes early (Linux's sync_file_range), so that a large download's
final fsync has little left to write and does not stall for seconds at its end."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

WRITEBACK_EVERY = 8 * 1024 * 1024  # bytes written between two writeback starts


@functools.cache
def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range (fd, offset, length, flags), or None where it is missing."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


_SYNC_FILE_RANGE_WRITE = 2


class Writeback:
    """Starts the disk writes of what has been written so far, every WRITEBACK_EVERY bytes, without
    waiting for them: the caller's final fsync then has little left to write."""

    def __init__(self, fd: int) -> None:
        self.start = _writeback_starter()
        self.fd = fd
        self.done = 0

    def advance(self, written: int) -> None:
        if self.start is not None and written - self.done >= WRITEBACK_EVERY:
            self.start(self.fd, self.done, written - self.done, _SYNC_FILE_RANGE_WRITE)
            self.done = written
