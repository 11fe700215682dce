"""`artifacts fetch --from vm` of many files, against the real sshd: one SFTP session for them all,
one deadline for the whole fetch (also against a VM that trickles its bytes, through a throttling
proxy), and manifest paths too long for the local file system named as the entries' mismatches."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from fixture_sshd import SshServer
from stall_proxy import StallProxy

from win_automation.adapters import ssh
from win_automation.artifacts.copying import copy_verified
from win_automation.artifacts.store import MANIFEST, ArtifactEntry, Manifest
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.operations.artifacts import VmSource


def vm_job(remote_dir: Path, files: dict[str, bytes], listed: dict[str, bytes] | None = None) -> str:
    """A job folder on the VM holding `files`; its manifest lists them and `listed` (not there)."""
    job = new_job_id()
    folder = remote_dir / job
    entries = []
    for path, data in {**files, **(listed or {})}.items():
        if path in files:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append(ArtifactEntry(type="ssh", path=path, size_bytes=len(data), sha256=digest))
    folder.mkdir(exist_ok=True)
    manifest = Manifest(
        job_id=job, trace_id=new_trace_id(), created_at="2026-12-05T00:00:00Z", artifacts=entries
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json())
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return job


def left(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_many_small_files_come_on_one_sftp_session_and_match(
    live_sshd: SshServer, ssh_config, remote_dir, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Each file had its own channel and sftp-server (and INIT, STAT, OPEN, FSTAT, READ, CLOSE
    waiting for each answer in turn): 1,000 small files took 3.5-5.3 s. Now one session, the
    small files' requests in flight together; larger files (the pipelined download) and files
    that are missing, a folder or grew mix in on the same session."""
    files = {f"d{i % 7}/f{i:04d}.txt": os.urandom(i % 300) for i in range(400)}
    files["big.bin"] = os.urandom(3 << 20)  # over sftp_fetch.SMALL: the pipelined download
    files["after-big.txt"] = b"after"
    files["grown.txt"] = b"grown"
    files["empty.txt"] = b""
    job = vm_job(remote_dir, files, {"missing.txt": b"x", "a-folder": b"y"})
    (remote_dir / job / "grown.txt").write_bytes(b"grown, and more")
    (remote_dir / job / "a-folder").mkdir(mode=0o755)
    conn = ssh.get_connection(ssh_config)
    channels = 0
    real_open = conn.open_channel

    def counted(**sizes: int):  # type: ignore[no-untyped-def]
        nonlocal channels
        channels += 1
        return real_open(**sizes)

    monkeypatch.setattr(conn, "open_channel", counted)  # the real one, counted
    source = VmSource(conn, str(remote_dir), job)
    try:
        _, mismatches = copy_verified(source, tmp_path / "out")
    finally:
        source.close()
    assert sorted(map(str, mismatches)) == [
        "a-folder (a directory, not a file)",
        "grown.txt (size 15, manifest says 5; not copied)",
        "missing.txt (missing)",
    ]
    # one session for the manifest and every file (a file that failed mid-way would take another)
    assert channels == 1
    del files["grown.txt"]
    assert left(tmp_path / "out") == sorted(files)
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data


def deep_folder(root: Path, total: int) -> Path:
    """A folder whose path is `total` bytes long (names of at most 200 bytes)."""
    folder = root
    while (room := total - len(os.fsencode(str(folder))) - 1) > 0:
        folder = folder / ("d" * min(room, 200))
    folder.mkdir(parents=True)
    assert len(os.fsencode(str(folder))) == total
    return folder


def test_a_manifest_path_too_long_here_names_the_entry_and_the_rest_is_fetched(
    cli, live_sshd: SshServer, known_hosts, remote_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A name of 255 characters is fine on Windows and can be 765 bytes in UTF-8, over the 255
    bytes a Linux name may be; a path under a deep --out can pass 4096 bytes. Both were blamed
    on --out (exit 74, `--out OUT: cannot write ...: File name too long; choose a folder you can
    write`), and ended the fetch."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir)}
    long_name = "é" * 150 + ".txt"  # 304 bytes
    files = {"a.txt": b"first", "sub/" + "n" * 200 + ".txt": b"deep", "z.txt": b"last"}
    job = vm_job(remote_dir, files, {long_name: b"windows"})
    out = deep_folder(tmp_path / "o", 3880)  # OUT/JOB/a.txt fits; OUT/JOB/sub/nnn...txt does not
    res = cli("artifacts", "fetch", "--from", "vm", "--job", job, "--out", str(out), env=env)
    assert res.code == 1, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "--out" in err, err
    assert err.startswith(f"error: fetch {job} from 127.0.0.1:") and "2 file(s) do not match" in err
    assert (
        f"{'é' * 60}...{'é' * 56}.txt (manifest entry 4: the name '{'é' * 30}...{'é' * 26}.txt' is 304"
        " bytes, longer than the 255 a file name may be on the file system of --out; not copied)"
    ) in err
    assert (
        f"sub/{'n' * 56}...{'n' * 56}.txt (manifest entry 2: its path is 208 bytes, under --out 4122,"
        " longer than the 4095 a path may be there; not copied)"
    ) in err
    assert left(out / job) == ["a.txt", "z.txt"]


@pytest.fixture
def trickling(live_sshd: SshServer, known_hosts: Path):  # type: ignore[no-untyped-def]
    """The CLI's environment for the sshd behind a proxy that forwards `rate` bytes a second."""
    proxies: list[StallProxy] = []

    def make(rate: int, **ssh_settings: object) -> dict[str, str]:
        proxy = StallProxy(live_sshd.port, down_rate=rate, every_connection=True)
        proxies.append(proxy)
        settings = {"host_key_fingerprint": live_sshd.fingerprint(), **ssh_settings}
        return live_sshd.env(known_hosts, port=proxy.port, **settings)

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_fetch_of_many_files_that_trickle_in_ends_at_its_one_deadline(
    cli, trickling, remote_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Each file had its own deadline (command_timeout plus 1 s per MiB of it): 200 files that
    each came within theirs made a fetch without end. Now the whole fetch has one (here 4 s plus
    200 KiB/MiB): exit 124, the files verified until then kept, none half-written, no manifest,
    and the message says what was fetched and what was not."""
    files = {f"f{i:03d}.txt": os.urandom(1024) for i in range(200)}
    job = vm_job(remote_dir, files)
    env = {
        **trickling(32 * 1024, command_timeout=4),
        "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir),
    }
    started = time.monotonic()
    res = cli("artifacts", "fetch", "--from", "vm", "--job", job, "--out", str(tmp_path / "out"), env=env)
    took = time.monotonic() - started
    assert res.code == 124, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: SFTP fetch of {remote_dir}/{job} passed its deadline of 4.19531s"), err
    kept = left(tmp_path / "out" / job)
    assert 0 < len(kept) < 200 and "manifest.json" not in kept, kept  # no .tmp-* file either
    assert f"; {len(kept)} of 200 file(s) fetched and verified into {tmp_path / 'out' / job};" in err
    rest = [name for name in sorted(files) if name not in kept]
    assert f"; not fetched: {', '.join(rest[:3])} and {len(rest) - 3} more; no manifest written" in err
    for name in kept:
        assert (tmp_path / "out" / job / name).read_bytes() == files[name]
    assert took < 15, took  # the process's start and the connection, then 4.2 s


def test_a_fetch_whose_one_answer_trickles_in_ends_at_its_deadline(
    cli, trickling, remote_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The deadline was checked between answers: a VM that trickles one 255 KiB READ answer in
    (16 KiB/s, never a stall) held the fetch 16 s past it. Now checked as each piece arrives."""
    job = vm_job(remote_dir, {"a.txt": b"first", "big.bin": os.urandom(2 << 20)})
    env = {
        **trickling(16 * 1024, command_timeout=0.5),
        "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir),
    }
    started = time.monotonic()
    res = cli("artifacts", "fetch", "--from", "vm", "--job", job, "--out", str(tmp_path / "out"), env=env)
    took = time.monotonic() - started
    assert res.code == 124, res.stderr
    assert "passed its deadline of 2.5s" in res.stderr, res.stderr
    assert "; 1 of 2 file(s) fetched and verified into" in res.stderr
    assert "; not fetched: big.bin; no manifest written" in res.stderr
    assert left(tmp_path / "out" / job) == ["a.txt"]
    assert took < 10, took  # 2.5 s from the session's start; the first answer alone takes 16 s


def test_a_fetch_that_stalls_ends_within_the_stall_bound_saying_what_it_fetched(
    cli, live_sshd: SshServer, known_hosts, remote_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    files = {f"f{i:03d}.txt": os.urandom(1024) for i in range(200)}
    job = vm_job(remote_dir, files)
    proxy = StallProxy(live_sshd.port, down_budget=120_000)  # the VM stops answering part-way
    try:
        env = {
            **live_sshd.env(
                known_hosts,
                port=proxy.port,
                host_key_fingerprint=live_sshd.fingerprint(),
                connect_timeout=1,
                keepalive_interval=0.5,
            ),
            "WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR": str(remote_dir),
        }
        out = tmp_path / "out"
        started = time.monotonic()
        res = cli("artifacts", "fetch", "--from", "vm", "--job", job, "--out", str(out), env=env)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert res.code == 3, res.stderr
    err = res.stderr.strip().splitlines()[-1]  # after the log's warning that the connection went
    assert err.startswith(f"error: SFTP fetch of {remote_dir}/{job} stalled: the VM sent nothing for 1s"), err
    kept = left(out / job)
    assert 0 < len(kept) < 200, kept
    assert f"; {len(kept)} of 200 file(s) fetched and verified into {out / job}; not fetched: " in err
    assert err.endswith("more; no manifest written"), err
    assert took < 10, took
