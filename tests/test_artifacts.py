"""Artifact folders on real files: manifest atomicity under kill -9, tampering, retention."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tmpfs
from fixture_jobs import wait_for

from win_automation.artifacts.copying import copy_verified
from win_automation.artifacts.hashing import hash_file
from win_automation.artifacts.retention import prune
from win_automation.artifacts.store import (
    ArtifactWriter,
    _HashingWriter,
    read_manifest,
    safe_relative,
    verify_folder,
)
from win_automation.errors import ArtifactMismatch, NotFoundError, StorageError, StorageFull, UsageError
from win_automation.jobs.ids import new_job_id, new_trace_id

TYPES = ("ssh", "aloha", "playwright")

DAY = 86400.0


def writer(root: Path, created: float | None = None) -> ArtifactWriter:
    return ArtifactWriter(root, new_job_id(created), new_trace_id(), created, types=TYPES)


def test_writes_files_and_a_manifest_that_verifies(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write_text("ssh", "stdout.txt", "hello\n")
    w.write_text("ssh", "stderr.txt", "")
    w.write_text("ssh", "exit_code.txt", "0\n")
    w.write_text("ssh", "stdout.txt", "hello again\n")  # rewritten: one entry, new hash
    with w.open("playwright", "shots/screenshot.png") as handle:
        handle.write(b"\x89PNG" * 1000)
    manifest = verify_folder(w.folder)
    assert (manifest.job_id, manifest.trace_id) == (w.job_id, w.trace_id)
    assert manifest.created_at.endswith("Z")
    by_path = {a.path: a for a in manifest.artifacts}
    assert list(by_path) == ["stderr.txt", "exit_code.txt", "stdout.txt", "shots/screenshot.png"]
    assert by_path["stdout.txt"].sha256 == hashlib.sha256(b"hello again\n").hexdigest()
    assert by_path["shots/screenshot.png"].size_bytes == 4000 and by_path["stdout.txt"].type == "ssh"
    assert not [p for p in w.folder.rglob(".tmp-*")]
    raw = json.loads((w.folder / "manifest.json").read_text())
    assert set(raw) == {"job_id", "trace_id", "created_at", "artifacts"}
    assert set(raw["artifacts"][0]) == {"type", "path", "size_bytes", "sha256"}


def test_a_batch_enters_the_manifest_whole_at_its_end_even_when_it_raises(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write_text("ssh", "before.txt", "0\n")
    with pytest.raises(RuntimeError, match="mid-batch"), w.batch():
        w.write_text("ssh", "stdout.txt", "first\n")
        first = w.write_text("ssh", "stdout.txt", "out\n")  # written again: one entry, the last
        with w.batch():  # nested: the outer one records
            w.write_text("ssh", "stderr.txt", "err\n")
        assert first.sha256 == hashlib.sha256(b"out\n").hexdigest()
        assert [a.path for a in read_manifest(w.folder).artifacts] == ["before.txt"]  # not yet
        with w.open("ssh", "result.json") as handle:
            handle.write(b"{")
            raise RuntimeError("mid-batch")
    manifest = verify_folder(w.folder)  # every listed file is there, as listed
    assert [a.path for a in manifest.artifacts] == ["before.txt", "stdout.txt", "stderr.txt"]
    assert not (w.folder / "result.json").exists() and not list(w.folder.rglob(".tmp-*"))


@pytest.mark.parametrize(
    "name", ["", "../x", "/etc/passwd", "a/../../b", "manifest.json", "a\\b", "./x", ".tmp-x"]
)
def test_artifact_paths_stay_inside_the_job_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="plain relative path"):
        safe_relative(name)
    with pytest.raises(UsageError):
        writer(tmp_path).write_text("ssh", name, "x")
    assert not list(tmp_path.parent.glob("x")) and not Path("/etc/passwd.tmp").exists()


def test_bad_type_and_bad_job_id_touch_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="artifact type 'video'"):
        writer(tmp_path).write_text("video", "a.mp4", "x")
    with pytest.raises(UsageError, match="not a job id"):
        ArtifactWriter(tmp_path, "../escape", new_trace_id(), types=TYPES)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_storage_full_and_retried(tmp_path: Path) -> None:
    full = open("/dev/full", "wb", buffering=0)  # noqa: SIM115  the kernel's ENOSPC on every write
    with full, pytest.raises(StorageFull, match=r"^artifacts.out_dir: cannot write /dev/full: No space left"):
        _HashingWriter(full).write(b"evidence")
    assert StorageFull.transient and StorageFull.exit_code == 74


def test_hash_file_matches_hashlib_on_odd_sizes(tmp_path: Path) -> None:
    for size in (0, 1, (1 << 20) - 1, (1 << 20) + 1, 3 << 20):
        path = tmp_path / f"f{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        assert hash_file(path) == (size, hashlib.sha256(data).hexdigest())


def test_a_tampered_artifact_is_caught_by_verify_and_fetch(tmp_path: Path) -> None:
    w = writer(tmp_path / "root")
    w.write_text("ssh", "stdout.txt", "the real output\n")
    w.write_text("aloha", "response.json", '{"status": "ok"}')
    w.write_text("ssh", "exit_code.txt", "0\n")
    (w.folder / "stdout.txt").write_text("the fake output\n")  # same size, other bytes
    (w.folder / "response.json").write_text("{}")  # other size
    (w.folder / "exit_code.txt").unlink()
    with pytest.raises(ArtifactMismatch) as info:
        verify_folder(w.folder)
    message = str(info.value)
    assert "3 file(s) do not match" in message
    assert "stdout.txt (sha256" in message and "response.json (size 2" in message
    assert "exit_code.txt (missing)" in message
    out = tmp_path / "out"
    _, mismatches = copy_verified(w.folder, out)
    assert sorted(m.path for m in mismatches) == ["exit_code.txt", "response.json", "stdout.txt"]
    assert not (out / "manifest.json").exists() and not (out / "stdout.txt").exists()
    assert not list(out.glob(".tmp-*"))


def test_fetch_copies_and_verifies(tmp_path: Path) -> None:
    w = writer(tmp_path / "root")
    w.write_bytes("playwright", "trace.zip", os.urandom(3 << 20))
    seen: list[int] = []
    manifest, mismatches = copy_verified(w.folder, tmp_path / "out", seen.append)
    assert mismatches == [] and sum(seen) == 3 << 20
    assert verify_folder(tmp_path / "out") == manifest


def test_a_disk_that_fills_mid_fetch_says_what_was_fetched_and_what_was_not(tmp_path: Path) -> None:
    """A write into `out` that fails (a full disk) ends the fetch with a StorageError naming the
    file, and, as one that passed its deadline, what it fetched and verified and what it did not:
    the error named the file only, and left the user to find out what OUT held."""
    w = writer(tmp_path / "root")
    w.write_text("ssh", "a.txt", "first\n")
    w.write_bytes("ssh", "b.bin", os.urandom(400 << 10))
    w.write_text("ssh", "c.txt", "last\n")
    with tmpfs(tmp_path / "small", "1m") as disk:
        (disk / "filler").write_bytes(bytes(800 << 10))  # about 200 KiB left: a.txt fits, b.bin not
        out = disk / "out"
        with pytest.raises(StorageError) as caught:
            copy_verified(w.folder, out)
        assert str(caught.value) == (
            f"cannot write {out / 'b.bin'}: No space left on device; 1 of 3 file(s) fetched and"
            f" verified into {out}; not fetched: b.bin, c.txt; no manifest written"
        )
        assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
        assert (out / "a.txt").read_text() == "first\n"


def test_manifest_survives_kill_9_during_a_large_write(
    jobs_child: Callable[..., subprocess.Popen[str]], jobs_env: dict[str, str]
) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    child = jobs_child("run", "gated", '{"size_mb": 2000}')
    wait_for(lambda: (data / "writing-large").exists(), what="the large write")
    time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (folder,) = Path(jobs_env["WIN_AUTOMATION_ARTIFACT_OUT"]).iterdir()
    manifest = verify_folder(folder)
    assert [a.path for a in manifest.artifacts] == ["stdout.txt"]
    assert not (folder / "trace.zip").exists()
    assert list(folder.glob(".tmp-trace.zip*"))  # the half-written temp, named in no manifest


def test_retention_boundaries(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    ages = {"fresh": 0.0, "six-days": 6 * DAY, "boundary": 7 * DAY, "over": 7 * DAY + 1, "old": 30 * DAY}
    ids = {}
    for label, age in ages.items():
        w = writer(tmp_path, now - age)
        w.write_text("ssh", "stdout.txt", label)
        ids[label] = w.job_id
    (tmp_path / "not-a-job").mkdir()
    active = writer(tmp_path, now - 40 * DAY)
    active.write_text("ssh", "stdout.txt", "still running")
    dry = prune(tmp_path, 7 * DAY, now=now, dry_run=True, keep=frozenset({active.job_id}))
    assert {r.job_id for r in dry} == {ids["over"], ids["old"]}
    assert all((tmp_path / ids[k]).exists() for k in ages)
    done = prune(tmp_path, 7 * DAY, now=now, keep=frozenset({active.job_id}))
    assert {r.job_id for r in done} == {ids["over"], ids["old"]} and all(r.size_bytes > 0 for r in done)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {ids["fresh"], ids["six-days"], ids["boundary"], "not-a-job", active.job_id}
    assert {r.job_id for r in prune(tmp_path, 0, now=now + 1, keep=frozenset({active.job_id}))} == {
        ids["fresh"],
        ids["six-days"],
        ids["boundary"],
    }
    assert prune(tmp_path / "missing", DAY) == []


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no artifacts for job .*: .* has no manifest\.json") as info:
        read_manifest(tmp_path)
    assert info.value.exit_code == 66
    with pytest.raises(NotFoundError, match=r"does not exist"):
        read_manifest(tmp_path / "absent")


def test_a_manifest_that_names_a_path_outside_the_folder_is_refused(tmp_path: Path) -> None:
    w = writer(tmp_path / "root")
    w.write_text("ssh", "stdout.txt", "x")
    raw = json.loads((w.folder / "manifest.json").read_text())
    raw["artifacts"][0]["path"] = "../../escape.txt"
    (w.folder / "manifest.json").write_text(json.dumps(raw))
    for action in (lambda: verify_folder(w.folder), lambda: copy_verified(w.folder, tmp_path / "out")):
        with pytest.raises(ArtifactMismatch, match=r"not a valid manifest .*not a plain relative path"):
            action()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()
