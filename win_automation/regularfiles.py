"""Local files that must be regular files: checked before they are opened, and once opened.

A FIFO without a writer blocks `open()` for reading forever; /dev/zero (or a symlink to it) reads
without end; a device node or FIFO given as a download target would be replaced by the rename of
the finished file. So a path read as a file (an upload's source, a script, an artifact, a key or
known-hosts file) goes through `open_regular`: `stat` (symlinks followed) must show a regular
file, it is opened non-blocking (a FIFO swapped in meanwhile does not block) and the opened
descriptor must be a regular file too (what was checked is what is read). `require_regular` is
the check alone. Both raise `NotRegularFile` (an OSError: "not a regular file (a FIFO)"),
IsADirectoryError for a folder, and the OSError of `stat`/`open` otherwise. `not_regular` says
what a path is when it is not a regular file (a download must not be renamed over it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from io import FileIO
from pathlib import Path

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def kind(mode: int) -> str:
    """What a file of this mode is, in words (`a FIFO`, `a character device`, ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a file"


class NotRegularFile(OSError):
    """A path that is a FIFO, a device or a socket where a regular file is needed."""

    def __init__(self, path: str | Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind(mode)})", str(path))
        self.kind = kind(mode)


def _check(path: str | Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, mode)


def require_regular(path: str | Path) -> os.stat_result:
    """`os.stat(path)` when it is a regular file; NotRegularFile, IsADirectoryError or the OSError."""
    result = os.stat(path)
    _check(path, result.st_mode)
    return result


def not_regular(path: str | Path) -> str | None:
    """What `path` is (`a FIFO`, `a directory`, ...) when it is there and not a regular file
    (symlinks followed); None when it is one, or is not there (or cannot be looked at: opening
    it says why). For a file that a rename must not replace, or a check with no open to follow."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind(mode)


def open_regular(path: str | Path) -> FileIO:
    """`path` opened for reading (unbuffered) when it is a regular file, without ever blocking
    in `open()`; raises as `require_regular`."""
    require_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check(path, os.fstat(fd).st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
