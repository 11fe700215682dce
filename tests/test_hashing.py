"""artifacts.hashing: the file hash equals hashlib's at every size around its buffers and windows,
mapped (under a read lease) or read; another process truncating the file while it is mapped
waits for the lease to be let go instead of killing the hashing process (SIGBUS)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from win_automation.artifacts import hashing


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        hashing.INLINE_BELOW - 1,
        hashing.INLINE_BELOW,
        hashing.CHUNK * (hashing.BUFFERS + 3) + 7,
        hashing.MAP_FROM - 1,
        hashing.MAP_FROM,
        hashing.WINDOW * 3 + 5,
    ],
)
def test_hash_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    assert hashing.hash_file(path, seen.append) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size


def test_a_failing_progress_callback_stops_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(hashing.CHUNK * 12))
    before = threading.active_count()

    def boom(count: int) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        hashing.hash_file(path, boom)
    assert threading.active_count() == before  # the reader thread ended


def test_an_unreadable_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        hashing.hash_file(tmp_path)


def test_a_file_open_for_writing_is_read_not_mapped(tmp_path: Path) -> None:
    data = os.urandom(hashing.WINDOW * 2 + 11)
    path = tmp_path / "f"
    path.write_bytes(data)
    with path.open("r+b") as writer:  # no read lease while a writer has it open
        with hashing._read_lease(os.open(path, os.O_RDONLY)) as leased:
            assert leased is None
        assert hashing.hash_file(path) == (len(data), hashlib.sha256(data).hexdigest())
        writer.write(b"x")


def test_a_truncation_while_mapped_waits_for_the_lease_and_kills_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(hashing.WINDOW * 8)
    path.write_bytes(data)
    truncator: list[subprocess.Popen[bytes]] = []
    started: list[float] = []

    def progress(count: int) -> None:
        if not truncator:  # another process truncates the file after the first window
            started.append(time.monotonic())
            truncate = f"import os; os.truncate({str(path)!r}, 0)"  # blocks (no O_NONBLOCK)
            truncator.append(subprocess.Popen([sys.executable, "-c", truncate]))
            time.sleep(0.3)  # it is blocked in truncate(2), breaking the lease

    size, digest = hashing.hash_file(path, progress)
    truncator[0].wait(10)
    assert truncator[0].returncode == 0 and time.monotonic() - started[0] < 5  # not the 45 s lease timeout
    assert path.stat().st_size == 0
    assert hashing.WINDOW <= size < len(data)  # mapped until the break was seen, then read: the rest was gone
    assert digest == hashlib.sha256(data[:size]).hexdigest()
