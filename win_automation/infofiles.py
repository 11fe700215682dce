"""The small files beside a private socket (the warm helper's, the warm CLI process's): an info
file, written whole and read back bounded, and a log, appended to. A FIFO, a huge file or a
symlink to a device in their place blocks or exhausts nothing: the info file is replaced, read
only when it is a regular file and at most INFO_LIMIT bytes of it, and the log is /dev/null
unless it is a regular file (opening a FIFO nobody reads would block for good)."""

from __future__ import annotations

import contextlib
import json
import os
from stat import S_ISREG
from typing import IO, Any

INFO_LIMIT = 4096
"""Bytes of an info file read at most (one is ~150): a huge one is not read whole."""


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An info file's object; {} when it is missing, unreadable, not a regular file, too large
    or not a JSON object (nested too deep included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            return {}
        info = json.loads(os.read(fd, INFO_LIMIT))  # larger: cut, not JSON
    except (OSError, ValueError, RecursionError):  # 4 KiB of `[`: nested past the parser's limit
        return {}
    finally:
        os.close(fd)
    return info if isinstance(info, dict) else {}


def write_info(path: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Write an info file whole (a temporary file renamed), in place of whatever is there."""
    temp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(info))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def open_log(path: str | os.PathLike[str]) -> IO[bytes]:
    """The log, opened for appending; /dev/null in place of anything but a regular file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
    except OSError:
        return open(os.devnull, "ab")
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return open(os.devnull, "ab")
    return os.fdopen(fd, "ab")


def last_line(path: str | os.PathLike[str]) -> str | None:
    """The last line of a log's last INFO_LIMIT bytes (None: no regular file, or nothing in it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd)
        if not S_ISREG(size.st_mode):
            return None
        tail = os.pread(fd, INFO_LIMIT, max(0, size.st_size - INFO_LIMIT))
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = tail.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else None
