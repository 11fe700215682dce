"""artifacts.hashing: the file hash equals hashlib's at every size around its buffer; a file
truncated or grown while it is hashed is hashed as read (no signal, no hang); what cannot be
hashed raises."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from win_automation.artifacts import hashing
from win_automation.regularfiles import NotRegularFile


@pytest.mark.parametrize("size", [0, 1, hashing.CHUNK - 1, hashing.CHUNK, hashing.CHUNK * 3 + 5])
def test_hash_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    assert hashing.hash_file(path, seen.append) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size


def test_a_failing_progress_callback_stops_the_hashing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(hashing.CHUNK * 4))
    calls: list[int] = []

    def boom(count: int) -> None:
        calls.append(count)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        hashing.hash_file(path, boom)
    assert calls == [hashing.CHUNK]


@pytest.mark.parametrize("change", ["truncate", "grow"])
def test_a_file_changed_while_hashed_is_hashed_as_read(tmp_path: Path, change: str) -> None:
    path = tmp_path / "f"
    data = os.urandom(hashing.CHUNK * 4)
    path.write_bytes(data)

    def progress(count: int) -> None:
        if change == "truncate":
            os.truncate(path, hashing.CHUNK * 2)
        elif os.path.getsize(path) == len(data):
            with path.open("ab") as more:
                more.write(b"tail")

    size, digest = hashing.hash_file(path, progress)
    expected = data[: hashing.CHUNK * 2] if change == "truncate" else data + b"tail"
    assert (size, digest) == (len(expected), hashlib.sha256(expected).hexdigest())


def test_what_is_not_a_readable_regular_file_raises(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        hashing.hash_file(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFile):
        hashing.hash_file(tmp_path / "fifo")  # without opening it for reading: no block
    with pytest.raises(FileNotFoundError):
        hashing.hash_file(tmp_path / "missing")
