"""Special local files where a regular file is expected: FIFOs (which block `open()` without a
writer), device nodes (/dev/zero reads without end; a node must never be replaced) and sockets,
given as a download target, an upload's source, a script, a key or known-hosts file, or found in
a job folder in place of an artifact. Each is refused in one line naming the path, at once, and
nothing is created or replaced. Real CLI processes, the real sshd, real FIFOs and device nodes."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixture_sshd import SshServer
from test_ssh_get_warm import COLD, warm_up

from win_automation.artifacts.store import ArtifactWriter
from win_automation.jobs.ids import new_job_id, new_trace_id

QUICK = 20  # seconds: each call here answers in well under this, or it hangs (the fault)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def null_device(path: Path) -> Path:
    """A private node of /dev/null's device (1, 3): replacing it would harm nothing else."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def zero_link(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    held: list[socket.socket] = []

    def make(path: Path) -> Path:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        held.append(sock)
        return path

    yield make
    for sock in held:
        sock.close()


KINDS = {
    "fifo": (fifo, "a FIFO"),
    "device": (null_device, "a character device"),
    "link to /dev/zero": (zero_link, "a character device"),
}


def one_line(res, code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    assert res.code == code, res.stderr
    assert res.stderr == f"error: {message}\n"


def node_kind(path: Path) -> int:
    return stat.S_IFMT(os.stat(path).st_mode)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_get_into_a_fifo_or_device_is_refused_and_replaces_nothing(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    """Cold and through the warm helper: the download would write a part file beside the
    target and rename it over the node (as root, over /dev/null itself)."""
    make, what = KINDS[kind]
    env = live_sshd.env(known_hosts)
    (remote_dir / "file.txt").write_text("payload")
    out = tmp_path / "out"
    out.mkdir()
    target = make(out / "target")
    before = node_kind(target)
    for mode in ("cold", "warm"):
        if mode == "warm":
            warm_up(cli, env, remote_dir, tmp_path)
        res = cli(
            "ssh", "get", str(remote_dir / "file.txt"), str(target),
            env={**env, **COLD} if mode == "cold" else env, timeout=QUICK,
        )  # fmt: skip
        one_line(res, 1, f"local path {target} is not a regular file ({what})")
        assert node_kind(target) == before and sorted(p.name for p in out.iterdir()) == ["target"], mode


def test_get_into_a_socket_is_refused(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, unix_socket
) -> None:  # type: ignore[no-untyped-def]
    (remote_dir / "file.txt").write_text("payload")
    target = unix_socket(tmp_path / "sock")
    res = cli("ssh", "get", str(remote_dir / "file.txt"), str(target), env=live_sshd.env(known_hosts))
    one_line(res, 1, f"local path {target} is not a regular file (a socket)")
    assert stat.S_ISSOCK(os.lstat(target).st_mode)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_put_from_a_fifo_or_device_is_refused_at_once(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    make, what = KINDS[kind]
    source = make(tmp_path / "source")
    res = cli(
        "ssh", "put", str(source), str(remote_dir / "up.bin"), env=live_sshd.env(known_hosts), timeout=QUICK
    )
    one_line(res, 1, f"local path {source} is not a regular file ({what})")
    assert list(remote_dir.iterdir()) == []


def test_put_from_a_descriptor_of_a_regular_file_still_works(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:
    """`ssh put /dev/fd/3 R` with `3<file`: the descriptor names a regular file."""
    import subprocess
    import sys

    put = [sys.executable, "-m", "win_automation", "ssh", "put"]
    source = tmp_path / "source.txt"
    source.write_text("by descriptor")
    fd = os.open(source, os.O_RDONLY)
    try:
        proc = subprocess.run(
            [*put, f"/dev/fd/{fd}", str(remote_dir / "up.txt")],
            env={**cli_env, **live_sshd.env(known_hosts), **COLD},
            cwd=tmp_path, capture_output=True, text=True, timeout=60, pass_fds=(fd,),
        )  # fmt: skip
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert (remote_dir / "up.txt").read_text() == "by descriptor"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_script_file_that_is_a_fifo_or_device_is_a_usage_error(cli, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    make, what = KINDS[kind]
    script = make(tmp_path / "script.ps1")
    one_line(
        cli("ssh", "script", str(script), timeout=QUICK), 2, f"FILE: {script} is not a regular file ({what})"
    )
    python = make(tmp_path / "script.py")
    one_line(
        cli("playwright", "run", str(python), timeout=QUICK),
        2,
        f"SCRIPT {python}: not a regular file ({what})",
    )


@pytest.mark.parametrize("field", ["known_hosts", "key_file"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_key_or_known_hosts_file_that_is_a_fifo_or_device_is_a_config_error(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, field: str, kind: str
) -> None:  # type: ignore[no-untyped-def]
    make, what = KINDS[kind]
    path = make(tmp_path / f"special-{field}")
    env = {**live_sshd.env(known_hosts), f"WIN_AUTOMATION_SSH_{field.upper()}": str(path), **COLD}
    res = cli("ssh", "run", "--shell", "cmd", "--", "echo", "hi", env=env, timeout=QUICK)
    assert res.code == 2, res.stderr
    assert res.stderr.startswith("error: step exec: ")  # the job's step failed, and says why
    assert res.stderr.endswith(f": ssh.{field}: {path} is not a regular file ({what})\n"), res.stderr
    assert res.stderr.count("\n") == 1
    if field == "known_hosts":
        trust = cli("ssh", "trust", "--fingerprint", live_sshd.fingerprint(), env=env, timeout=QUICK)
        one_line(trust, 2, f"ssh.known_hosts: {path} is not a regular file ({what})")
    assert os.path.lexists(path)  # still there


def job_with_two_files(root: Path) -> Path:
    writer = ArtifactWriter(root, new_job_id(), new_trace_id(), types=("ssh",))
    writer.write_text("ssh", "a.txt", "first")
    writer.write_text("ssh", "b.txt", "second")
    return writer.folder


def test_verify_and_fetch_report_fifos_and_devices_in_a_job_folder(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A FIFO would block `open()` forever, a link to /dev/zero hash without end."""
    folder = job_with_two_files(tmp_path / "artifacts")
    for name, make in (("a.txt", fifo), ("b.txt", zero_link)):
        (folder / name).unlink()
        make(folder / name)
    expected = (
        "2 file(s) do not match the manifest: a.txt (a FIFO, not a regular file), "
        "b.txt (a character device, not a regular file)\n"
    )
    verify = cli("artifacts", "verify", "--job", folder.name, timeout=QUICK)
    assert verify.code == 1 and verify.stderr == f"error: verify {folder.name}: {expected}", verify.stderr
    out = tmp_path / "out"
    fetch = cli("artifacts", "fetch", "--job", folder.name, "--out", str(out), timeout=QUICK)
    assert fetch.code == 1 and fetch.stderr.endswith(expected), fetch.stderr
    assert not (out / folder.name / "manifest.json").exists()


@pytest.mark.parametrize("name", ["a.txt", "manifest.json"])  # the manifest's was replaced, rc 0
def test_fetch_does_not_replace_a_fifo_in_the_out_folder(cli, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    folder = job_with_two_files(tmp_path / "artifacts")
    out = tmp_path / "out"
    (out / folder.name).mkdir(parents=True)
    target = fifo(out / folder.name / name)
    fetch = cli("artifacts", "fetch", "--job", folder.name, "--out", str(out), timeout=QUICK)
    said = (  # the manifest's place is looked at before any file is fetched
        ""
        if name == "manifest.json"
        else f" 0 of 2 file(s) fetched and verified into {out / folder.name}; not fetched: a.txt,"
        " b.txt; no manifest written;"
    )
    one_line(
        fetch,
        74,
        f"--out {out}: cannot write {target}: it is a FIFO, not a regular file;{said}"
        " choose a folder you can write",
    )
    assert stat.S_ISFIFO(os.stat(target).st_mode) and sorted(os.listdir(target.parent)) == [name]


def test_doctor_names_a_key_file_that_is_a_fifo(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "key"
    os.mkfifo(key, 0o600)  # its mode alone passes the check
    env = {"WIN_AUTOMATION_SSH_KEY_FILE": str(key)}
    res = cli("doctor", "--check", "ssh_key", "--json", env=env, timeout=QUICK)
    (check,) = [c for c in json.loads(res.stdout)["checks"] if c["name"] == "ssh_key"]
    assert res.code == 1 and check["status"] == "fail", res.stdout
    assert check["cause"] == f"ssh.key_file: {key} is not a regular file (a FIFO)"


def test_fetch_writes_nothing_through_a_link_in_the_out_folder(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A folder link already in OUT/JOB (`sub -> /elsewhere`) had the fetch write its files
    there, outside --out."""
    writer = ArtifactWriter(tmp_path / "artifacts", new_job_id(), new_trace_id(), types=("ssh",))
    writer.write_text("ssh", "sub/a.txt", "first")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / writer.job_id).mkdir(parents=True)
    (out / writer.job_id / "sub").symlink_to(elsewhere)
    fetch = cli("artifacts", "fetch", "--job", writer.job_id, "--out", str(out), timeout=QUICK)
    one_line(
        fetch,
        74,
        f"--out {out}: cannot write {out / writer.job_id / 'sub' / 'a.txt'}: a symbolic link in its path"
        f" leads out of {out / writer.job_id}; 0 of 1 file(s) fetched and verified into"
        f" {out / writer.job_id}; not fetched: sub/a.txt; no manifest written; choose a folder you can write",
    )
    assert list(elsewhere.iterdir()) == []
