"""Per-VM locks across every local process: the desktop (one GUI job at a time on one VM) and
the firewall (one supervisor applying the VM's rules at a time).

`vm_lock(data_dir, vm)` takes an exclusive `fcntl.flock` on `<data.dir>/locks/<kind>-<vm>.lock`.
The kernel drops the lock when its holder exits, however it dies (kill -9 included), so a crashed
GUI job never blocks the desktop. Waiting polls, so a job asked to stop while it waits for the
desktop stops waiting (Cancelled).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from win_automation.errors import Cancelled, StorageError
from win_automation.jobs.owners import process_stopped

POLL_SECONDS = 0.05
HOLDER_CHECK_SECONDS = 1.0


KINDS = {"gui": "desktop", "firewall": "firewall"}  # a lock's file prefix: what it guards


def lock_path(data_dir: Path, vm: str, kind: str = "gui") -> Path:
    return data_dir / "locks" / f"{kind}-{re.sub(r'[^A-Za-z0-9.-]', '_', vm)}.lock"


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it ("pid N, job J"), with `stopped` when
    that process is stopped (Ctrl-Z, SIGSTOP: it holds the desktop until it is continued); "" when
    the file names nobody."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:  # pread: a FIFO in the lock's place (ESPIPE) is read as nobody, not waited on
        pid_text, _, job = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return ""
    said = f"pid {pid}" + (f", job {job}" if job else "")
    if process_stopped(pid, None):
        said += f"; that process is stopped (Ctrl-Z?): continue it (kill -CONT {pid}) or end it"
    return said


@contextmanager
def vm_lock(
    data_dir: Path,
    vm: str,
    *,
    owner: str = "",
    cancelled: Callable[[], bool] = lambda: False,
    on_wait: Callable[[str], None] = lambda holder: None,
    kind: str = "gui",
) -> Iterator[None]:
    """Hold the desktop (`kind` gui) or the firewall of `vm` (e.g. `localhost:22555`) for the
    duration of the block; `owner` (a job id) is written in the lock file beside the pid. While
    another holds it, `on_wait` is called with who that is when the wait starts and whenever that
    changes (checked each second); `cancelled()` turning true ends the wait (Cancelled)."""
    what = KINDS[kind]
    path = lock_path(data_dir, vm, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a file as locks/, a folder as the lock, a read-only disk
        why = "it exists and is not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        where = exc.filename or path
        raise StorageError(
            f"the {what} lock {path} cannot be used: {where}: {why}; move it aside (or point"
            " data.dir, WIN_AUTOMATION_DATA_DIR, elsewhere)"
        ) from None
    try:
        said, checked = None, 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if cancelled():
                    raise Cancelled(f"cancelled while waiting for the {what} of {vm}") from None
                if time.monotonic() - checked >= HOLDER_CHECK_SECONDS:
                    checked = time.monotonic()
                    if (now := _holder(fd)) != said:
                        said = now
                        on_wait(now)
                time.sleep(POLL_SECONDS)
        with contextlib.suppress(OSError):  # who holds it, for people; a full disk keeps it empty
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {owner}".strip().encode() + b"\n")
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
