"""Fetching a job's artifacts from the VM's artifact folder over SFTP (a real sshd on loopback)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import tmpfs

from win_automation.artifacts.copying import copy_verified
from win_automation.artifacts.store import CHUNK, ArtifactWriter
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.operations.artifacts import sftp_path


def test_sftp_paths_for_windows_and_posix_roots() -> None:
    job = "20261122T015916123Z-3f9a1c0b7e2d"
    assert sftp_path(r"C:\ProgramData\win-automation\artifacts", job, "manifest.json") == (
        f"/C:/ProgramData/win-automation/artifacts/{job}/manifest.json"
    )
    assert sftp_path("/srv/artifacts/", job) == f"/srv/artifacts/{job}"


def vm_job(remote_dir: Path) -> ArtifactWriter:
    writer = ArtifactWriter(
        remote_dir, new_job_id(), new_trace_id(), types=("ssh", "ping", "aloha", "playwright")
    )
    writer.write_text("ssh", "stdout.txt", "remote output\n")
    writer.write_bytes("playwright", "trace.zip", os.urandom(300_000))
    for path in [writer.folder, *writer.folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return writer


def test_fetch_from_the_vm_verifies_every_file(
    cli, live_sshd, known_hosts, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir)}
    writer = vm_job(remote_dir)
    res = cli("artifacts", "fetch", "--job", writer.job_id, "--out", str(tmp_path / "out"), env=env)
    assert res.code == 0, res.stderr
    copy = tmp_path / "out" / writer.job_id
    for name in ("stdout.txt", "trace.zip"):
        assert (copy / name).read_bytes() == (writer.folder / name).read_bytes()
    assert json.loads((copy / "manifest.json").read_text())["job_id"] == writer.job_id

    (writer.folder / "stdout.txt").write_text("remote OUTPUT\n")  # same size, other bytes
    again = cli(
        "artifacts", "fetch", "--from", "vm", "--job", writer.job_id, "--out", str(tmp_path / "o2"), env=env
    )
    assert again.code == 1
    assert "1 file(s) do not match the manifest: stdout.txt (sha256" in again.stderr
    assert not (tmp_path / "o2" / writer.job_id / "stdout.txt").exists()
    assert (tmp_path / "o2" / writer.job_id / "trace.zip").exists()
    assert not (tmp_path / "o2" / writer.job_id / "manifest.json").exists()
    # into the first copy: its manifest went first (it matched the files no more)
    again = cli(
        "artifacts", "fetch", "--from", "vm", "--job", writer.job_id, "--out", str(tmp_path / "out"), env=env
    )
    assert again.code == 1 and not (copy / "manifest.json").exists()


def test_a_fifo_or_folder_on_the_vm_is_a_mismatch_at_once_and_the_rest_is_fetched(
    cli, live_sshd, known_hosts, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The VM's open of a FIFO waits for a writer: the fetch stalled 60 s, exit 3, fetched
    nothing after it, and left an sftp-server blocked on the VM; a folder ended the fetch."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir)}
    writer = vm_job(remote_dir)
    fifo = writer.folder / "stdout.txt"
    fifo.unlink()
    os.mkfifo(fifo, 0o644)
    started = time.monotonic()
    res = cli("artifacts", "fetch", "--job", writer.job_id, "--out", str(tmp_path / "out"), env=env)
    assert time.monotonic() - started < 15
    assert res.code == 1 and res.stderr.endswith(
        "1 file(s) do not match the manifest: stdout.txt (a FIFO, not a regular file)\n"
    ), res.stderr
    assert sorted(p.name for p in (tmp_path / "out" / writer.job_id).iterdir()) == ["trace.zip"]
    got = cli("ssh", "get", str(fifo), str(tmp_path / "fifo.bin"), env=env)
    assert (got.code, got.stderr) == (1, f"error: remote path {fifo} is not a regular file (a FIFO)\n")
    fifo.unlink()
    fifo.mkdir(mode=0o755)
    res = cli("artifacts", "fetch", "--job", writer.job_id, "--out", str(tmp_path / "o2"), env=env)
    assert res.code == 1 and res.stderr.endswith("stdout.txt (a directory, not a file)\n"), res.stderr


def test_fetch_of_a_job_the_vm_does_not_have(
    cli, live_sshd, known_hosts, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir)}
    job = new_job_id()
    res = cli("artifacts", "fetch", "--job", job, "--out", str(tmp_path / "out"), env=env)
    assert res.code == 1 and f"{job}/manifest.json does not exist" in res.stderr
    bad = cli("artifacts", "fetch", "--from", "disk", "--job", job, "--out", str(tmp_path / "out"))
    assert bad.code == 2 and "--from: 'disk' must be auto, local or vm" in bad.stderr


@pytest.mark.parametrize("source", ["vm", "local"])
def test_an_artifact_larger_than_its_manifest_says_is_not_copied(
    cli, live_sshd, known_hosts, remote_dir: Path, tmp_path: Path, source: str
) -> None:  # type: ignore[no-untyped-def]
    """A file that grew after the job (a log appended to for days) was copied whole before its
    size was compared: into a small `--out` disk, exit 74 (full) instead of the mismatch."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir)}
    writer = vm_job(remote_dir)
    if source == "local":
        env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(remote_dir)  # the same folder, read locally
    with (writer.folder / "stdout.txt").open("ab") as grown:
        grown.write(os.urandom(4 << 20))
    with tmpfs(tmp_path / "small", "1m") as small:
        res = cli(
            "artifacts", "fetch", "--from", source, "--job", writer.job_id, "--out", str(small), env=env
        )
        assert res.code == 1, res.stderr
        size = len("remote output\n") + (4 << 20)
        assert f"stdout.txt (size {size}, manifest says 14; not copied)" in res.stderr
        assert sorted(p.name for p in (small / writer.job_id).iterdir()) == ["trace.zip"]


def test_an_artifact_that_grows_while_copied_stops_at_its_manifest_size(tmp_path: Path) -> None:
    writer = ArtifactWriter(tmp_path / "src", new_job_id(), new_trace_id(), types=("ssh",))
    writer.write_bytes("ssh", "big.bin", os.urandom(CHUNK * 2))
    path = writer.folder / "big.bin"

    def grow(count: int) -> None:
        with path.open("ab") as more:
            more.write(os.urandom(CHUNK))

    _, mismatches = copy_verified(writer.folder, tmp_path / "out", grow)
    assert [str(m) for m in mismatches] == [
        f"big.bin (grew while copied, manifest says {CHUNK * 2}; not copied)"
    ]
    assert list((tmp_path / "out").iterdir()) == []
