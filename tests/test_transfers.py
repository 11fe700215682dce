"""Verified transfers against the real sshd: sizes 0 B, 1 B and 200 MB, missing and unwritable paths."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fixture_sshd import SshServer

from win_automation.adapters import ssh
from win_automation.errors import NotFoundError, WinAutomationError
from win_automation.operations import transfers


@pytest.fixture
def conn(ssh_config):  # type: ignore[no-untyped-def]
    ssh.close_all()
    yield ssh.get_connection(ssh_config)
    ssh.close_all()


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 3 * 65536 + 17])
def test_put_then_get_round_trip(conn, remote_dir: Path, tmp_path: Path, size: int) -> None:  # type: ignore[no-untyped-def]
    local = tmp_path / "in.bin"
    local.write_bytes(os.urandom(size))
    target = str(remote_dir / "up.bin")
    seen: list[tuple[int, int]] = []
    put = transfers.put_file(
        conn, local, target, remote_os="posix", progress=lambda d, t: seen.append((d, t))
    )
    assert (put.size_bytes, put.sha256) == (size, sha(local)) == (size, sha(Path(target)))
    assert sorted(p.name for p in remote_dir.iterdir()) == ["up.bin"]  # no partial file left
    (tmp_path / "dl").mkdir()
    back = tmp_path / "dl" / "out.bin"
    got = transfers.get_file(conn, target, back, remote_os="posix")
    assert (got.size_bytes, got.sha256) == (size, sha(local)) and back.read_bytes() == local.read_bytes()
    assert [p.name for p in back.parent.iterdir()] == ["out.bin"]
    if size:
        assert seen and seen[-1][0] == size


@pytest.mark.slow
def test_200_megabytes_down_and_up_with_hashes(conn, remote_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    big = remote_dir / "big.bin"
    block = os.urandom(1 << 20)
    with big.open("wb") as fh:
        for _ in range(200):
            fh.write(block)
    expected = sha(big)
    local = tmp_path / "big.bin"
    got = transfers.get_file(conn, str(big), local, remote_os="posix")
    assert (got.size_bytes, got.sha256) == (200 << 20, expected) and sha(local) == expected
    big.unlink()
    put = transfers.put_file(conn, local, str(remote_dir / "again.bin"), remote_os="posix")
    assert put.sha256 == expected == sha(remote_dir / "again.bin")


def test_missing_remote_file_is_not_found_and_leaves_nothing(conn, remote_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "dl").mkdir()
    with pytest.raises(NotFoundError, match=f"remote file {remote_dir}/nope.txt does not exist"):
        transfers.get_file(conn, str(remote_dir / "nope.txt"), tmp_path / "dl" / "x.txt", remote_os="posix")
    assert list((tmp_path / "dl").iterdir()) == []


def test_unwritable_local_path_is_a_clear_error(conn, remote_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (remote_dir / "a.txt").write_text("hello")
    with pytest.raises(WinAutomationError, match=r"cannot write local path /proc/nope\.txt"):
        transfers.get_file(conn, str(remote_dir / "a.txt"), Path("/proc/nope.txt"), remote_os="posix")
    with pytest.raises(WinAutomationError, match="its folder does not exist"):
        transfers.get_file(conn, str(remote_dir / "a.txt"), tmp_path / "no" / "a.txt", remote_os="posix")


def test_put_into_an_unwritable_remote_folder_leaves_nothing(
    conn, live_sshd: SshServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    local = tmp_path / "f.txt"
    local.write_text("x")
    with pytest.raises(WinAutomationError, match="permission denied"):
        transfers.put_file(conn, local, str(live_sshd.dir / "f.txt"), remote_os="posix")
    assert not list(live_sshd.dir.glob("f.txt*"))
    with pytest.raises(NotFoundError, match=r"local file .* does not exist"):
        transfers.put_file(conn, tmp_path / "missing", "x", remote_os="posix")
