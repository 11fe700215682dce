"""artifacts.hashing: the file hash equals hashlib's at every size around its buffer; a file
truncated or grown while it is hashed is hashed as read (no signal, no hang); what cannot be
hashed raises."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
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


def test_hash_files_gives_each_files_hash_or_error_in_order(tmp_path: Path) -> None:
    datas = [os.urandom(n) for n in (hashing.CHUNK * 2 + 3, 0, 7, hashing.CHUNK)]
    paths = []
    for i, data in enumerate(datas):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(data)
    os.mkfifo(tmp_path / "fifo")
    paths[2:2] = [tmp_path / "missing", tmp_path / "fifo"]
    seen: list[int] = []
    got = hashing.hash_files(paths, seen.append)
    assert isinstance(got[2], FileNotFoundError) and isinstance(got[3], NotRegularFile)
    expected = [(len(d), hashlib.sha256(d).hexdigest()) for d in datas]
    assert got[:2] + got[4:] == expected
    assert sum(seen) == sum(len(d) for d in datas)


@pytest.mark.parametrize(("cpus", "files", "threads"), [(2, 2, 2), (32, 12, hashing.MAX_THREADS)])
def test_hash_files_hashes_files_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, files: int, threads: int
) -> None:
    """One thread per CPU, up to MAX_THREADS: each thread's first chunk waits for the others' (it
    would time out, and raise out of hash_files, were fewer hashing at once)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    paths = [tmp_path / f"f{i}" for i in range(files)]
    for path in paths:
        path.write_bytes(os.urandom(hashing.CHUNK * 2))
    together = threading.Barrier(threads, timeout=10)
    seen: set[int] = set()
    lock = threading.Lock()

    def progress(count: int) -> None:
        with lock:
            first = threading.get_ident() not in seen
            seen.add(threading.get_ident())
        if first:
            together.wait()

    got = hashing.hash_files(paths, progress)
    assert got == [(p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]
    assert len(seen) == threads and threading.get_ident() not in seen


def test_ctrl_c_while_files_hash_stops_every_thread_at_its_next_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    paths = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for path in paths:
        path.write_bytes(bytes(hashing.CHUNK * 50))
    done: list[int] = []

    def slow(count: int) -> None:  # 50 chunks, 10 ms each: 0.5 s a file
        done.append(count)
        time.sleep(0.01)

    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))  # as Ctrl-C
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        hashing.hash_files(paths, slow)
    assert time.monotonic() - started < 0.4  # not the 1 s the files take
    settled = len(done)
    time.sleep(0.1)
    assert len(done) == settled < 3 * 50  # no thread hashes on
    assert not [t for t in threading.enumerate() if t.name.startswith("hash")]
