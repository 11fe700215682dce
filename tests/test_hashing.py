"""artifacts.hashing: the pipelined file hash equals hashlib's, at every size around its buffers."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from win_automation.artifacts import hashing


@pytest.mark.parametrize(
    "size",
    [0, 1, hashing.INLINE_BELOW - 1, hashing.INLINE_BELOW, hashing.CHUNK * (hashing.BUFFERS + 3) + 7],
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
