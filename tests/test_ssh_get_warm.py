"""`ssh get` through the warm-connection helper (ssh.persist): real CLI processes, the real sshd,
the real helper. The CLI opens the part file and hands it to the helper, which downloads into
it; everything a direct get does holds: the same output, errors and exit codes, no file under
the final name unless verified, no part file left, and the helper's faults (killed, paused,
socket removed, the caller interrupted) end the download cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import tmpfs
from fixture_sshd import SshServer, helper_logs
from stall_proxy import StallProxy
from test_ssh_persist import only_helper
from unprivileged import run_cli

from win_automation.adapters.persist import WarmConnection
from win_automation.operations import transfers

MIB = 1 << 20
COLD = {"WIN_AUTOMATION_SSH_PERSIST": "0"}

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".wa-part-" in p.name)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warm_up(cli, env: dict[str, str], remote_dir: Path, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A cold `ssh get` (which starts the helper as it exits); the helper, once it serves."""
    (remote_dir / "warm-up.txt").write_text("warm")
    res = cli("ssh", "get", str(remote_dir / "warm-up.txt"), str(tmp_path / "warm-up.txt"), env=env)
    assert res.code == 0, res.stderr
    return only_helper(cli, env)


@pytest.fixture
def slow_link(live_sshd: SshServer, known_hosts: Path) -> Iterator[dict[str, str]]:
    """The server behind a proxy that forwards its bytes at 2 MiB/s: downloads take seconds."""
    proxy = StallProxy(live_sshd.port, down_rate=2 * MIB, every_connection=True)
    try:
        yield live_sshd.env(
            known_hosts,
            port=proxy.port,
            host_key_fingerprint=live_sshd.fingerprint(),
            connect_timeout=2,
            keepalive_interval=1,
        )
    finally:
        proxy.close()


def start_get(
    cli_env: dict[str, str], env: dict[str, str], remote: Path, local: Path
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "get", str(remote), str(local)],
        env={**cli_env, **env},
        cwd=local.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C, SIGTERM and SIGHUP as from a terminal, also when the suite runs with them
        # ignored (`cmd &`, nohup)
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in INTERRUPTS],
    )


def wait_mid_transfer(folder: Path) -> Path:
    """The part file, once the helper has written into it."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [folder / name for name in parts(folder)]
        if found and found[0].stat().st_size > 0:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("the download never started writing its part file")


def get_in_flight(
    cli_env: dict[str, str], env: dict[str, str], remote_dir: Path, tmp_path: Path
) -> tuple[Path, Path, subprocess.Popen[str], Path]:
    """An 8 MiB `ssh get` into tmp_path/out, under way: (source, out, the process, its part file)."""
    source = remote_dir / "big.bin"
    source.write_bytes(os.urandom(8 * MIB))
    out = tmp_path / "out"
    out.mkdir()
    proc = start_get(cli_env, env, source, out / "big.bin")
    return source, out, proc, wait_mid_transfer(out)


def gets_again(cli, env: dict[str, str], source: Path, out: Path) -> None:  # type: ignore[no-untyped-def]
    """The next `ssh get` of `source` works, and leaves the file whole and no part file."""
    again = cli("ssh", "get", str(source), str(out / "big.bin"), env=env)
    assert again.code == 0, again.stderr
    assert sha(out / "big.bin") == sha(source) and parts(out) == []


def test_a_warm_get_is_the_direct_one_without_paramiko(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    source = remote_dir / "data.bin"
    source.write_bytes(os.urandom(3 * MIB + 17))
    helper = warm_up(cli, env, remote_dir, tmp_path)
    warm = cli("ssh", "get", "--json", str(source), str(tmp_path / "warm.bin"), env=env)
    direct = cli("ssh", "get", "--json", str(source), str(tmp_path / "direct.bin"), env={**env, **COLD})
    assert warm.code == direct.code == 0, warm.stderr + direct.stderr
    assert only_helper(cli, env)["pid"] == helper["pid"]
    expected = sha(source)
    for name, res in (("warm.bin", warm), ("direct.bin", direct)):
        assert sha(tmp_path / name) == expected
        assert f'"sha256": "{expected}"' in res.stdout and f'"size_bytes": {3 * MIB + 17}' in res.stdout
    assert parts(tmp_path) == []
    probe = (  # the CLI ends with os._exit (win_automation.cli.finish), after the atexit handlers
        "import atexit, runpy, sys\n"
        f"sys.argv = ['win-automation', 'ssh', 'get', {str(source)!r}, {str(tmp_path / 'probe.bin')!r}]\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in sys.modules if 'paramiko' in m)))\n"
        "runpy.run_module('win_automation', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**cli_env, **env}, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "HEAVY []", out.stdout + out.stderr
    assert sha(tmp_path / "probe.bin") == expected


def test_a_warm_get_reports_progress_from_the_helper(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    warm_up(cli, env, remote_dir, tmp_path)
    source = remote_dir / "progress.bin"
    source.write_bytes(os.urandom(40 * MIB))
    cfg = live_sshd.config(known_hosts)
    warm = WarmConnection(cfg, Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), cfg.persist)
    assert warm.available()
    seen: list[tuple[int, int]] = []
    got = transfers.get_file(
        warm, str(source), tmp_path / "p.bin", remote_os="posix", progress=lambda d, t: seen.append((d, t))
    )
    assert got.sha256 == sha(source) == sha(tmp_path / "p.bin")
    assert seen[-1] == (40 * MIB, 40 * MIB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.fixture
def fake_openssl(live_sshd: SshServer) -> Iterator[None]:
    """The VM's hash command prints a wrong digest (a download that does not match the VM's file)."""
    shim = live_sshd.bin / "openssl"
    shim.write_text('#!/bin/sh\nfor last; do :; done\necho "' + "0" * 64 + ' *$last"\n')
    shim.chmod(0o755)
    yield
    shim.unlink()


@pytest.mark.parametrize(
    "fault", ["missing remote", "remote folder", "remote device", "local folder", "no parent", "mismatch"]
)
def test_warm_errors_are_the_direct_ones_and_leave_nothing(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, fault: str, request
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    warm_up(cli, env, remote_dir, tmp_path)
    source = remote_dir / "file.bin"
    source.write_bytes(os.urandom(MIB))
    out = tmp_path / "out"
    out.mkdir()
    remote, local = str(source), out / "file.bin"
    if fault == "missing remote":
        remote = str(remote_dir / "nope.bin")
    elif fault == "remote folder":
        remote = str(remote_dir)
    elif fault == "remote device":  # its reads never end: it ran until the 600 s hash timeout
        remote = "/dev/zero"
    elif fault == "local folder":
        local.mkdir()
    elif fault == "no parent":
        local = out / "no" / "file.bin"
    else:
        request.getfixturevalue("fake_openssl")
    warm = cli("ssh", "get", remote, str(local), env=env)
    cold = cli("ssh", "get", remote, str(local), env={**env, **COLD})
    assert warm.code == cold.code == 1, warm.stderr + cold.stderr
    assert warm.stderr == cold.stderr and warm.stderr.count("\n") == 1 and "Traceback" not in warm.stderr
    if fault == "mismatch":
        assert "is corrupt: sha256 " + "0" * 64 + " on the VM" in warm.stderr
    if fault == "remote device":
        assert "remote path /dev/zero is not a regular file (a character device)" in warm.stderr
    assert sorted(p.name for p in out.iterdir()) == (["file.bin"] if fault == "local folder" else [])


def test_a_read_only_destination_is_the_direct_error(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**cli_env, **live_sshd.env(known_hosts)}
    (remote_dir / "file.bin").write_bytes(os.urandom(MIB))
    first = run_cli(
        "ssh", "get", str(remote_dir / "file.bin"), str(tmp_path / "first.bin"), env=env, cwd=tmp_path
    )
    assert first.code == 0, first.stderr
    only_helper(cli, env)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    args = ("ssh", "get", str(remote_dir / "file.bin"), str(locked / "file.bin"))
    warm = run_cli(*args, env=env, cwd=tmp_path)
    cold = run_cli(*args, env={**env, **COLD}, cwd=tmp_path)
    assert warm.code == cold.code == 1
    assert (
        warm.stderr
        == cold.stderr
        == f"error: cannot write local path {locked / 'file.bin'}: Permission denied\n"
    )
    assert list(locked.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system (tmpfs): writing more fails with ENOSPC."""
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def test_a_full_disk_is_exit_74_warm_and_direct(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, small_disk: Path
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    warm_up(cli, env, remote_dir, tmp_path)
    (remote_dir / "big.bin").write_bytes(os.urandom(8 * MIB))
    target = small_disk / "big.bin"
    warm = cli("ssh", "get", str(remote_dir / "big.bin"), str(target), env=env)
    cold = cli("ssh", "get", str(remote_dir / "big.bin"), str(target), env={**env, **COLD})
    assert warm.code == cold.code == 74, warm.stderr + cold.stderr
    assert warm.stderr == cold.stderr == f"error: cannot write local path {target}: No space left on device\n"
    assert list(small_disk.iterdir()) == []


def test_helper_killed_mid_download_is_exit_3_and_leaves_nothing(
    cli, cli_env: dict[str, str], slow_link: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    old = warm_up(cli, slow_link, remote_dir, tmp_path)["pid"]
    source, out, proc, _ = get_in_flight(cli_env, slow_link, remote_dir, tmp_path)
    started = time.monotonic()
    os.kill(old, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 2  # noticed at once, not after a stall bound
    assert proc.returncode == 3 and stderr.count("\n") == 1 and "helper" in stderr and "died" in stderr
    assert list(out.iterdir()) == []
    gets_again(cli, slow_link, source, out)
    assert only_helper(cli, slow_link)["pid"] != old


def test_helper_paused_mid_download_is_exit_3_then_replaced(
    cli, cli_env: dict[str, str], slow_link: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    old = warm_up(cli, slow_link, remote_dir, tmp_path)["pid"]
    source, out, proc, _ = get_in_flight(cli_env, slow_link, remote_dir, tmp_path)
    os.kill(old, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - started < 6  # the stall bound: 2 s without a heartbeat
        assert proc.returncode == 3 and "stopped answering" in stderr and stderr.count("\n") == 1
        assert list(out.iterdir()) == []
        gets_again(cli, slow_link, source, out)
        assert only_helper(cli, slow_link)["pid"] != old
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed by the call that replaced it
            os.kill(old, signal.SIGCONT)


def test_socket_removed_mid_download_is_exit_3_and_the_next_get_works(
    cli, cli_env: dict[str, str], slow_link: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    helper = warm_up(cli, slow_link, remote_dir, tmp_path)
    source, out, proc, _ = get_in_flight(cli_env, slow_link, remote_dir, tmp_path)
    Path(helper["socket"]).unlink()  # the helper leaves: its socket is gone
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "helper" in stderr and stderr.count("\n") == 1
    assert list(out.iterdir()) == []
    gets_again(cli, slow_link, source, out)  # no helper: direct


@pytest.mark.parametrize("signum", INTERRUPTS)
def test_an_interrupted_get_stops_the_helpers_download(
    cli, cli_env: dict[str, str], slow_link: dict[str, str], remote_dir: Path, tmp_path: Path, signum: int
) -> None:  # type: ignore[no-untyped-def]
    helper = warm_up(cli, slow_link, remote_dir, tmp_path)
    _, out, proc, part = get_in_flight(cli_env, slow_link, remote_dir, tmp_path)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and list(out.iterdir()) == [], (proc.returncode, stderr)

    def holds_part() -> bool:
        fds = Path(f"/proc/{helper['pid']}/fd")
        return any(part.name in os.readlink(fd) for fd in fds.iterdir() if fd.exists())

    deadline = time.monotonic() + 5
    while holds_part() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holds_part(), "the helper kept downloading after its caller went away"
    assert only_helper(cli, slow_link)["pid"] == helper["pid"]


def test_an_interrupted_get_closes_the_vms_hash_in_the_helper(
    cli, cli_env: dict[str, str], slow_link: dict[str, str], slow_to_hash: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The helper's thread that waits for the VM's hash ends with the cancelled get, closing the
    hash's channel (which ends the hash on Windows); it held a session of the shared connection
    for as long as the file took to hash."""
    helper = warm_up(cli, slow_link, slow_to_hash.parent, tmp_path)
    tasks = Path(f"/proc/{helper['pid']}/task")
    idle = len(list(tasks.iterdir()))
    out = tmp_path / "out"
    out.mkdir()
    proc = start_get(cli_env, slow_link, slow_to_hash, out / "big.bin")
    wait_mid_transfer(out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    ended = time.monotonic()
    while len(list(tasks.iterdir())) > idle and time.monotonic() - ended < 1.5:
        time.sleep(0.05)
    assert len(list(tasks.iterdir())) <= idle, "the helper still waits for the VM's hash"


def test_sigterm_mid_direct_get_leaves_no_part_file(
    cli_env: dict[str, str], slow_link: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:
    direct = {**slow_link, "WIN_AUTOMATION_SSH_PERSIST": "0"}
    _, out, proc, _ = get_in_flight(cli_env, direct, remote_dir, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and list(out.iterdir()) == [], (proc.returncode, stderr)


@pytest.mark.parametrize("signum", INTERRUPTS)
def test_an_interrupted_put_ends_at_once_and_removes_its_part_file(
    cli_env: dict[str, str],
    live_sshd: SshServer,
    known_hosts: Path,
    remote_dir: Path,
    tmp_path: Path,
    signum: int,
) -> None:
    """Cut short mid-write, the SFTP stream can be left mid-packet: an orderly close would wait
    the stall bound (here 60 s) for an answer that never comes. The connection goes instead, and
    the part file is removed over a new one."""
    source = tmp_path / "big.bin"
    with source.open("wb") as out:
        for _ in range(400):
            out.write(os.urandom(MIB))
    env = {**cli_env, **live_sshd.env(known_hosts, keepalive_interval=30), "WIN_AUTOMATION_SSH_PERSIST": "0"}
    for _ in range(3):  # the signal lands at a different point of the stream each time
        proc = subprocess.Popen(
            [sys.executable, "-m", "win_automation", "ssh", "put", str(source), str(remote_dir / "big.bin")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in INTERRUPTS],
        )
        try:
            deadline = time.monotonic() + 30
            while not parts(remote_dir) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert parts(remote_dir), "the upload never started"
            time.sleep(0.05)
            sent = time.monotonic()
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=20)
        finally:  # a put that hangs fails this test alone, not the next one (its pipes, its process)
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        assert time.monotonic() - sent < 20, "the put waited on its connection after the signal"
        assert proc.returncode == 130 and parts(remote_dir) == [], (proc.returncode, stderr)
        assert not (remote_dir / "big.bin").exists()


def test_a_file_larger_than_the_buffers_streams_through_the_helper(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    pid = warm_up(cli, env, remote_dir, tmp_path)["pid"]
    source = remote_dir / "huge.bin"
    block = os.urandom(MIB)
    with source.open("wb") as fh:
        for _ in range(256):
            fh.write(block)

    def rss_peak() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        raise AssertionError("no VmHWM")

    before = rss_peak()
    res = cli("ssh", "get", str(source), str(tmp_path / "huge.bin"), env=env, timeout=120)
    assert res.code == 0, res.stderr
    assert f"get {256 * MIB} bytes" in res.stdout
    assert rss_peak() - before < 64, "the helper held the file in memory"
    assert (tmp_path / "huge.bin").stat().st_size == 256 * MIB and sha(tmp_path / "huge.bin") == sha(source)


def test_the_transfer_deadline_holds_through_the_helper(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy = StallProxy(live_sshd.port, down_rate=128 * 1024, every_connection=True)  # never stalls
    try:
        env = live_sshd.env(
            known_hosts, port=proxy.port, host_key_fingerprint=live_sshd.fingerprint(), command_timeout=1
        )
        warm_up(cli, env, remote_dir, tmp_path)
        source = remote_dir / "slow.bin"
        source.write_bytes(os.urandom(2 * MIB))  # 16 s at this rate; the deadline is 1 s + 2 s
        out = tmp_path / "out"
        out.mkdir()
        started = time.monotonic()
        warm = cli("ssh", "get", str(source), str(out / "slow.bin"), env=env)
        took = time.monotonic() - started
        cold = cli("ssh", "get", str(source), str(out / "slow.bin"), env={**env, **COLD})
    finally:
        proxy.close()
    assert warm.code == cold.code == 124, warm.stderr + cold.stderr
    assert warm.stderr == cold.stderr and "passed its deadline of 3s" in warm.stderr
    assert took < 10 and list(out.iterdir()) == []


def test_parallel_transfers_through_one_helper_each_arrive_whole(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Gets, uploads, listings and removals at once through one helper, which serves them on
    one SSH connection and its one SFTP session: each arrives whole (sha256), none fails."""
    env = live_sshd.env(known_hosts)
    helper = warm_up(cli, env, remote_dir, tmp_path)
    cfg = live_sshd.config(known_hosts)
    warm = WarmConnection(cfg, Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), cfg.persist)
    (tmp_path / "got").mkdir()
    failures: list[BaseException] = []

    def getter(n: int) -> None:
        source = remote_dir / f"get-{n}.bin"
        source.write_bytes(os.urandom(MIB + n))
        for round_ in range(3):
            local = tmp_path / "got" / f"{n}-{round_}.bin"
            got = transfers.get_file(warm, str(source), local, remote_os="posix")
            assert got.sha256 == sha(source) == sha(local)

    def putter(n: int) -> None:
        for round_ in range(15):
            data = os.urandom(64 * 1024 + n * 1000 + round_)
            target = remote_dir / f"put-{n}-{round_}.bin"
            warm.put_bytes(str(target), data)
            assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
            assert target.name in [name for name, _ in warm.list_folder(str(remote_dir))]
            warm.remove(str(target))
            assert not target.exists()

    def guarded(work: Any, n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            failures.append(exc)

    works = [(work, n) for n in range(3) for work in (getter, putter)]
    threads = [threading.Thread(target=guarded, args=work) for work in works]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert failures == [], f"{failures}\n{helper_logs(Path(cli_env['WIN_AUTOMATION_DATA_DIR']), live_sshd)}"
    assert time.monotonic() - started < 60
    assert only_helper(cli, env)["pid"] == helper["pid"]
