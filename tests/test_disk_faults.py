"""The local disk failing the CLI while it works: the data.dir (journal, the warm processes'
files) filling up or turning read-only before and during a job, corrupt files where the journal
or the warm processes' info files should be. Real file systems: a small tmpfs per test (root)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import stop_warm_helpers, tmpfs
from fixture_sshd import SshServer
from test_cli_faults import _alive, _start_warm_cli_process, _wait_for_warm_cli_process
from test_playwright_install import make_wheel

from win_automation.artifacts.store import ArtifactWriter
from win_automation.jobs.ids import new_job_id

WA = [sys.executable, "-m", "win_automation"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (tmpfs) to fill."""
    with tmpfs(tmp_path / "small", "1m") as mount:
        try:
            yield mount
        finally:
            stop_warm_helpers(mount)


def fill(disk: Path) -> Path:
    """Write zeros to `disk`/fill until it is full; the file to remove to free it."""
    path = disk / "fill"
    with open(path, "wb", buffering=0) as out:
        block = bytes(64 << 10)
        with contextlib.suppress(OSError):
            while True:
                out.write(block)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return path


def jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*WA, "jobs", "list", "--json"],
        env={**env, "WIN_AUTOMATION_CLI_SERVER": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("path", ["in-process", "warm-cli-process", "run-ping"], ids=lambda p: str(p))
def test_the_journal_disk_filling_mid_job_is_exit_74_and_no_job_claims_success(
    cli_env: dict[str, str],
    live_sshd: SshServer,
    known_hosts: Path,
    remote_dir: Path,
    small_disk: Path,
    path: str,
) -> None:
    """The disk under data.dir fills while a job runs (its heartbeats and its steps' ends cannot
    be written): one error line naming the journal and the full disk, exit 74 (it was exit 1,
    `error: job ID running`), at most one warning from the heartbeat, the job never recorded as
    succeeded and reconciled to `interrupted` once the disk has room; the next call works."""
    env = {
        **cli_env,
        **live_sshd.env(known_hosts),
        "WIN_AUTOMATION_DATA_DIR": str(small_disk / "data"),
        "WIN_AUTOMATION_CLI_SERVER": "1" if path == "warm-cli-process" else "0",
    }
    if path == "warm-cli-process":
        _start_warm_cli_process(env, small_disk)
    go = remote_dir / "go"
    if path == "run-ping":
        # ping holds for its hold_seconds; the step ends after the disk is full
        argv = [*WA, "run", "ping", "--input", '{"hold_seconds": 2.5}']
    else:
        script = f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo done"
        argv = [*WA, "ssh", "run", "--shell", "cmd", "--", script]
    job = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if path == "run-ping":
            deadline = time.monotonic() + 30
            while not any(j["state"] == "running" for j in jobs(env)) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            assert job.stdout is not None and job.stdout.readline() == "started\n"
        filler = fill(small_disk)
        go.touch()
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 74, err
    lines = err.splitlines()
    journal = small_disk / "data" / "journal.sqlite3"
    assert lines[-1].startswith(f"error: the journal {journal} cannot be used"), err
    assert "no space left on its disk" in lines[-1], err
    assert len(lines) <= 2 and "Traceback" not in err, err  # the heartbeat's warning, once
    filler.unlink()
    record = jobs(env)[0]
    assert record["state"] == "interrupted", record  # the next command that opens the journal
    again = subprocess.run(
        [*WA, "ssh", "run", "--shell", "cmd", "--", "echo hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (again.returncode, again.stdout) == (0, "hi\n"), again.stderr
    assert jobs(env)[0]["state"] == "succeeded"


def _misplace(path: Path, what: str) -> str:
    """Put `what` where the file `path` should be; the words the error uses for it."""
    path.unlink(missing_ok=True)
    if what == "directory":
        path.mkdir()
        return "is a directory, not a file"
    if what == "fifo":
        os.mkfifo(path)
        return "is a FIFO, not a file"
    if what == "dev-null":
        path.symlink_to("/dev/null")
        return "is a character device, not a file"
    gone = path.parent / "gone" / "journal"  # in a folder that is not there: SQLite cannot create it
    path.symlink_to(gone)
    return f"is a symlink to a missing {gone}, not a file"


@pytest.mark.parametrize(
    ("suffix", "what"),
    # (a FIFO as -wal is no fault: SQLite removes it as a stale -wal)
    [(suffix, "directory") for suffix in ("", "-wal", "-shm")]
    + [("", what) for what in ("fifo", "dev-null", "dangling-symlink")]
    + [("-shm", "fifo"), ("-wal", "dev-null")],
)
def test_something_else_in_place_of_the_journal_or_its_wal_is_named(
    cli, tmp_path: Path, what: str, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    """A folder, FIFO, device or dangling symlink where journal.sqlite3 (or its -wal or -shm)
    should be: one line naming that file and how to recover (it was `unable to open database
    file` or `disk I/O error`, and `data.dir ... must be a writable folder`, which it is); doctor
    says the same."""
    assert cli("jobs", "list").code == 0
    journal = tmp_path / "data" / "journal.sqlite3"
    bad = journal.with_name(journal.name + suffix)
    said = _misplace(bad, what)
    res = cli("run", "ping")  # (a read, as `jobs list`, may still work with a bad -shm)
    assert res.code == 74 and res.stderr == (
        f"error: the journal {journal} cannot be used: {bad} {said}; move it aside"
        f" (mv {bad} {bad}.moved) and run the command again\n"
    )
    doctor = cli("doctor", "--check", "folders", "--json")
    (check,) = json.loads(doctor.stdout)["checks"]
    assert doctor.code == 1 and check["status"] == "fail" and f"{bad} {said}" in check["cause"], check
    bad.rename(bad.with_name(bad.name + ".moved"))
    assert cli("run", "ping").code == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "healthy"])
def test_doctor_names_a_corrupt_journal_and_changes_nothing(cli, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    """doctor passed `folders` with a corrupt journal that every other command refuses (exit 74);
    it now fails it with the same words (how to recover), and leaves a healthy journal as it was
    (no -wal or -shm file left behind by its read-only look)."""
    assert cli("run", "ping").code == 0
    journal = tmp_path / "data" / "journal.sqlite3"
    if damage == "garbage":
        journal.write_bytes(os.urandom(journal.stat().st_size))
    elif damage == "truncated":
        os.truncate(journal, journal.stat().st_size // 2)
    before = sorted(p.name for p in journal.parent.iterdir())
    doctor = cli("doctor", "--check", "folders", "--json")
    (check,) = json.loads(doctor.stdout)["checks"]
    if damage == "healthy":
        assert doctor.code == 0 and check["status"] == "pass", check
    else:
        assert doctor.code == 1 and check["status"] == "fail", check
        assert check["cause"].startswith(f"the journal {journal} is corrupt ("), check
        assert f"mv {journal} {journal}.corrupt" in check["cause"]
        assert cli("jobs", "list").code == 74  # what doctor said is what the commands meet
    assert sorted(p.name for p in journal.parent.iterdir()) == before


@pytest.mark.parametrize("damage", ["another-programs", "newer", "dropped-table"])
def test_a_journal_that_is_not_this_versions_is_named_by_every_command_and_doctor(
    cli, tmp_path: Path, damage: str
) -> None:  # type: ignore[no-untyped-def]
    """Another program's SQLite file, a newer version's journal (schema past this one's), a
    table dropped: the commands said `data.dir ... must be a writable folder with free space`
    (it is), or used a newer journal without a word; doctor passed `folders` for all three."""
    assert cli("run", "ping").code == 0
    journal = tmp_path / "data" / "journal.sqlite3"
    if damage == "another-programs":
        journal.unlink()
    conn = sqlite3.connect(journal)
    with conn:
        if damage == "another-programs":
            conn.execute("CREATE TABLE jobs (x)")
        elif damage == "newer":
            conn.execute("PRAGMA user_version = 99")
        else:
            conn.execute("DROP TABLE events")
    conn.close()
    said = (
        "is of a newer win-automation (schema 99;"
        if damage == "newer"
        else "is not a win-automation journal ("
    )
    reads = [("jobs", "list")] if damage != "dropped-table" else []  # a list needs no events
    for args in [("run", "ping"), *reads]:
        res = cli(*args)
        assert res.code == 74 and res.stderr.startswith(f"error: the journal {journal} {said}"), (
            args,
            res.stderr,
        )
        assert res.stderr.count("\n") == 1
    doctor = cli("doctor", "--check", "folders", "--json")
    (check,) = json.loads(doctor.stdout)["checks"]
    assert doctor.code == 1 and check["cause"].startswith(f"the journal {journal} {said}"), check


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("state", "paused", "has state 'paused', a state this version does not know"),
        ("created_at", "abc", "has created_at 'abc', not a time"),
        ("finished_at", 1e300, "has finished_at 1e+300, not a time"),
    ],
)
def test_a_record_edited_by_hand_is_named_not_a_traceback(
    cli, tmp_path: Path, column: str, value: object, said: str
) -> None:  # type: ignore[no-untyped-def]
    """`jobs list`, `jobs show` and `jobs resume` were tracebacks (ValueError, TypeError,
    OverflowError) on one record they could not read."""
    res = cli("run", "ping", "--json")
    job = json.loads(res.stdout)["job_id"]
    conn = sqlite3.connect(tmp_path / "data" / "journal.sqlite3")
    with conn:
        conn.execute(f"UPDATE jobs SET {column} = ? WHERE job_id = ?", (value, job))
    conn.close()
    for args in (("jobs", "list"), ("jobs", "show", job), ("jobs", "resume", job)):
        res = cli(*args)
        assert (res.code, res.stderr) == (
            74,
            f"error: the journal's record of job {job!r} {said} (edited by hand, or written by a newer"
            " win-automation?)\n",
        ), args


@pytest.mark.parametrize("served", [False, True], ids=["in-process", "warm-cli-process"])
def test_fetch_onto_a_full_disk_is_exit_74_naming_the_file(
    cli_env: dict[str, str], small_disk: Path, served: bool
) -> None:
    """`artifacts fetch --out` onto a full disk was exit 1, `ping.json (unreadable: No space left
    on device)`: the failed write into --out taken for the source artifact's. It is exit 74 naming
    the file it could not write, and leaves no manifest and no temporary file."""
    env = {**cli_env, "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0"}

    def wa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*WA, *args], env=env, capture_output=True, text=True, timeout=60)

    ran = wa("run", "ping", "--json")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)["job_id"]
    if served:
        _wait_for_warm_cli_process(env)
    out = small_disk / "out"
    out.mkdir()
    fill(small_disk)
    res = wa("artifacts", "fetch", "--job", job, "--out", str(out))
    assert res.returncode == 74, res.stderr
    assert res.stderr == (
        f"error: --out {out}: cannot write {out / job / 'ping.json'}: No space left on device;"
        f" 0 of 1 file(s) fetched and verified into {out / job}; not fetched: ping.json;"
        " no manifest written; choose a folder you can write\n"
    )
    assert sorted(p.name for p in (out / job).iterdir()) == []


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system mounted read-only (root is not stopped by permissions, EROFS stops it)."""
    with tmpfs(tmp_path / "ro", "1m") as mount:
        (mount / "folder").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "folder"


@pytest.fixture
def thin_disk(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """`make()`: a new ext4 file system of 64 MiB whose image lives on a 24 MiB tmpfs (a
    thin-provisioned disk that runs out): writes land in the page cache and succeed; their
    writeback fails, which only the fsync reports (ENOSPC or EIO). All unmounted after the test."""
    mounts: list[Path] = []

    def make() -> Path:
        index = len(mounts) // 2
        backing, mount = tmp_path / f"backing{index}", tmp_path / f"thin{index}"
        backing.mkdir()
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(backing)], check=True)
        mounts.append(backing)
        image = backing / "disk.img"
        with open(image, "wb") as sparse:
            sparse.truncate(64 << 20)
        mkfs = ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)]
        subprocess.run(mkfs, check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop,errors=continue", str(image), str(mount)], check=True)
        mounts.append(mount)
        return mount

    yield make
    for mount in reversed(mounts):  # the loop device goes with its file system's unmount
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("warm", [True, False], ids=["warm-helper", "direct"])
def test_ssh_get_onto_a_read_only_or_thin_full_disk_is_exit_74_naming_the_target(
    cli,
    live_sshd: SshServer,
    known_hosts: Path,
    remote_dir: Path,
    tmp_path: Path,
    read_only_disk: Path,
    thin_disk: Callable[[], Path],
    warm: bool,
) -> None:  # type: ignore[no-untyped-def]
    """`ssh get` into a read-only file system was exit 1 (as a permission is); on a disk whose
    space runs out only at writeback (the fsync fails) the error said `cannot write the output`
    (stdout's message). Both are the target's disk: exit 74, `cannot write local path TARGET`."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_SSH_PERSIST": "10m" if warm else "0"}
    (remote_dir / "small.txt").write_text("data")
    (remote_dir / "big.bin").write_bytes(os.urandom(40 << 20))
    if warm:
        assert cli("ssh", "get", str(remote_dir / "small.txt"), str(tmp_path / "s.txt"), env=env).code == 0
    target = read_only_disk / "small.txt"
    res = cli("ssh", "get", str(remote_dir / "small.txt"), str(target), env=env)
    assert (res.code, res.stderr) == (74, f"error: cannot write local path {target}: Read-only file system\n")
    target = thin_disk() / "big.bin"
    res = cli("ssh", "get", str(remote_dir / "big.bin"), str(target), env=env)
    assert res.code == 74 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"error: cannot write local path {target}: "), res.stderr
    assert not target.exists()


@pytest.mark.parametrize("served", [False, True], ids=["in-process", "warm-cli-process"])
@pytest.mark.parametrize("kind", ["sock", "json"])
def test_persist_stop_and_status_survive_a_folder_in_place_of_a_socket_or_info_file(
    cli_env: dict[str, str], kind: str, served: bool
) -> None:
    """A folder where a helper's (or warm CLI process's) socket or info file should be: `ssh
    persist stop --all` was a traceback (IsADirectoryError from its unlink). It now leaves what
    it cannot remove, exit 0, and `status` still lists it."""
    env = {**cli_env, "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0"}
    data = Path(env["WIN_AUTOMATION_DATA_DIR"])

    def wa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*WA, *args], env=env, capture_output=True, text=True, timeout=60)

    assert wa("run", "ping").returncode == 0
    if served:
        _wait_for_warm_cli_process(env)
    folders = [data / "ssh-persist" / f"0123456789abcdef0123.{kind}"]
    if not served:  # (a folder as the warm CLI process's own socket refuses every call: exit 74)
        folders.append(data / "cli-server" / f"0123456789abcdef0123.{kind}")
    for folder in folders:
        folder.mkdir(parents=True)
    for args in (["ssh", "persist", "stop", "--all"], ["ssh", "persist", "status", "--json"]):
        res = wa(*args)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert all(folder.is_dir() for folder in folders)  # not ours to remove


@pytest.mark.parametrize("what", ["fifo", "dev-zero"])
def test_a_manifest_that_is_a_fifo_or_device_is_refused_at_once(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, what: str
) -> None:  # type: ignore[no-untyped-def]
    """manifest.json as a FIFO blocked `artifacts verify|list|fetch` and `jobs resume` forever;
    as a symlink to /dev/zero they read it into memory until the kernel killed them (exit 137).
    Each is now one line at once, exit 74, naming it."""
    env = live_sshd.env(known_hosts)
    ran = cli("ssh", "run", "--json", "--shell", "cmd", "--", "exit 3", env=env)
    assert ran.code == 3, ran.stderr
    job = json.loads(ran.stdout)["job_id"]
    manifest = tmp_path / "artifacts" / job / "manifest.json"
    manifest.unlink()
    if what == "fifo":
        os.mkfifo(manifest)
        said = "a FIFO"
    else:
        manifest.symlink_to("/dev/zero")
        said = "a character device"
    error = f"cannot read {manifest}: not a regular file ({said})\n"
    for args in (
        ["artifacts", "verify", "--job", job],
        ["artifacts", "list", "--job", job],
        ["artifacts", "fetch", "--job", job, "--out", str(tmp_path / "out")],
    ):
        res = cli(*args, env=env, timeout=20)
        assert (res.code, res.stderr) == (74, f"error: {error}"), args
    res = cli("jobs", "resume", job, env=env, timeout=20)
    assert res.code == 74 and res.stderr.endswith(error), res.stderr


@pytest.mark.parametrize("served", [False, True], ids=["in-process", "warm-cli-process"])
def test_an_error_line_that_cannot_be_written_keeps_the_errors_own_exit_code(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, served: bool
) -> None:
    """stderr on a full disk (2>/dev/full): a bad job id or input was exit 1 (the failing write of
    the error line raised out of its handler); each keeps its documented code (2), as the error
    is what failed. (A job command's stderr is its live output: one that cannot be written stops
    the job, exit 74, as documented.)"""
    env = {**cli_env, **live_sshd.env(known_hosts), "WIN_AUTOMATION_CLI_SERVER": "1" if served else "0"}
    if served:
        assert subprocess.run([*WA, "run", "ping"], env=env, capture_output=True, timeout=60).returncode == 0
        _wait_for_warm_cli_process(env)
    cases = [
        (["jobs", "show", "not-a-job-id"], {}, 2),
        (["run", "ping", "--input", '{"hold_seconds": -1}'], {}, 2),
    ]
    for args, extra, code in cases:
        with open("/dev/full", "wb") as full:
            res = subprocess.run(
                [*WA, *args], env={**env, **extra}, stdout=subprocess.DEVNULL, stderr=full, timeout=60
            )
        assert res.returncode == code, args


def test_doctor_says_a_read_only_file_system_not_a_permission(cli, read_only_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """doctor said `data.dir: DIR is not writable by this user` for a folder on a read-only file
    system (remounted ro, as after a disk error): no permission change fixes that."""
    res = cli("doctor", "--check", "folders", "--json", env={"WIN_AUTOMATION_DATA_DIR": str(read_only_disk)})
    (check,) = json.loads(res.stdout)["checks"]
    assert res.code == 1 and check["cause"] == f"data.dir: {read_only_disk} is on a read-only file system"


def test_prune_on_a_read_only_disk_is_one_line_74(cli, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """`artifacts prune` of an old job folder on a file system remounted read-only was a
    traceback (OSError from shutil.rmtree, exit 1): one line naming the folder, exit 74."""
    env = {"WIN_AUTOMATION_ARTIFACT_OUT": str(small_disk / "art")}
    three_days_ago = time.time() - 3 * 86400
    job = new_job_id(three_days_ago)
    ArtifactWriter(small_disk / "art", job, "0" * 32, three_days_ago, types=("ping",)).write_text(
        "ping", "ping.json", "{}"
    )
    manifest = small_disk / "art" / job / "manifest.json"
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    res = cli("artifacts", "prune", "--older-than", "1d", env=env)
    folder = small_disk / "art" / job
    assert (res.code, res.stderr) == (
        74,
        f"error: artifacts.out_dir: cannot remove {folder}: Read-only file system\n",
    )
    assert manifest.is_file()


def test_trust_and_metrics_onto_a_full_or_read_only_disk_name_their_file(
    cli, live_sshd: SshServer, known_hosts: Path, small_disk: Path
) -> None:  # type: ignore[no-untyped-def]
    """`ssh trust` whose known-hosts file is on a full disk said `cannot write the output` (and
    left its .tmp file), on a read-only one it was a traceback; `--metrics` with metrics.path
    there, the same. Each is one line naming the setting and file, exit 74, nothing left over."""
    env = live_sshd.env(known_hosts)
    trusted = small_disk / "known_hosts"
    metrics = small_disk / "metrics.txt"
    trust = ["ssh", "trust", "--fingerprint", live_sshd.fingerprint()]
    run = ["run", "ping", "--metrics", "--metrics-interval", "0.2s", "--input", '{"hold_seconds": 0.5}']
    filler = fill(small_disk)
    for why in ("No space left on device", "Read-only file system"):
        res = cli(*trust, env={**env, "WIN_AUTOMATION_SSH_KNOWN_HOSTS": str(trusted)})
        assert (res.code, res.stderr) == (74, f"error: ssh.known_hosts: cannot write {trusted}: {why}\n")
        res = cli(*run, env={"WIN_AUTOMATION_METRICS_PATH": str(metrics)})
        assert res.code == 74 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.endswith(f"error: metrics.path: cannot write {metrics}: {why}\n"), res.stderr
        assert res.stderr.count("metrics could not be written") <= 1  # the thread's, once
        assert not trusted.exists() and not list(small_disk.glob("*.tmp"))
        if why.startswith("No space"):
            metrics.unlink(missing_ok=True)
            filler.unlink()
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)


@pytest.mark.parametrize("damage", ["locks-is-a-file", "lock-is-a-folder"])
def test_a_desktop_lock_that_cannot_be_created_is_one_line_74(cli, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    """A GUI job whose desktop lock cannot be created (a file as data.dir/locks, a folder as the
    lock file; a read-only disk alike) was a traceback (exit 1): one line naming it, exit 74, and
    the job is not left running."""
    locks = tmp_path / "data" / "locks"
    if damage == "locks-is-a-file":
        locks.parent.mkdir(parents=True)
        locks.write_text("")
        bad, why = locks, "it exists and is not a folder"
    else:
        locks.mkdir(parents=True)
        bad, why = locks / "gui-localhost_22555.lock", "Is a directory"
        bad.mkdir()
    vm = {"WIN_AUTOMATION_SSH_HOST": "localhost", "WIN_AUTOMATION_SSH_PORT": "22555"}
    res = cli("run", "aloha-task", "--input", '{"task": "open notepad"}', env=vm)
    assert (res.code, res.stderr) == (
        74,
        f"error: the desktop lock {locks / 'gui-localhost_22555.lock'} cannot be used: {bad}: {why}; move"
        " it aside (or point data.dir, WIN_AUTOMATION_DATA_DIR, elsewhere)\n",
    )
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert job["state"] == "interrupted", job


def test_a_wheel_that_does_not_fit_in_the_cache_leaves_no_truncated_copy(
    cli, small_disk: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`playwright install --wheel W` with data.dir on a full disk was a traceback (exit 1) and
    left a truncated wheel in the cache, which a later run without --wheel takes for the cached
    one: one line naming the cache file, exit 74, nothing left."""
    wheel = make_wheel(tmp_path)
    with zipfile.ZipFile(wheel, "a") as archive:  # incompressible: more than the disk holds
        archive.writestr("playwright/driver/big.bin", os.urandom(2 << 20))
    data = small_disk / "data"
    res = cli("playwright", "install", "--wheel", str(wheel), env={"WIN_AUTOMATION_DATA_DIR": str(data)})
    cached = data / "playwright" / wheel.name
    assert (res.code, res.stderr) == (
        74,
        f"error: data.dir: cannot copy the wheel to {cached}: No space left on device\n",
    )
    assert list((data / "playwright").iterdir()) == []


def test_a_manifest_on_the_vm_is_never_copied_whole_into_a_small_tmpdir(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, small_disk: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`artifacts fetch --from vm` downloaded the VM's manifest.json whole into a temporary file
    before checking its 16 MiB bound, so a huge one filled TMPDIR; on a full TMPDIR it said
    `cannot write 3` (a descriptor). One over the bound is refused from its size (exit 1); a
    TMPDIR that fills is named (exit 74)."""
    job = json.loads(cli("run", "ping", "--json").stdout)["job_id"]
    vm_root = remote_dir / "vm-artifacts"
    (vm_root / job).mkdir(parents=True)
    for folder in (vm_root, vm_root / job):
        os.chmod(folder, 0o755)  # the test login reads them
    env = {**live_sshd.env(known_hosts), "TMPDIR": str(small_disk)}
    env["WIN_AUTOMATION_ARTIFACTS_REMOTE_DIR"] = str(vm_root)
    manifest = vm_root / job / "manifest.json"
    fetch = ["artifacts", "fetch", "--job", job, "--from", "vm", "--out", str(tmp_path / "out")]
    for extra, code, said in (
        (3 << 20, 74, f"cannot write a temporary file in {small_disk} (the manifest from the VM)"),
        (20 << 20, 1, "on the VM: not a manifest (remote file"),
    ):
        manifest.write_bytes(b"{" + b" " * extra)
        os.chmod(manifest, 0o644)
        res = cli(*fetch, env=env)
        assert res.code == code and said in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("path", ["warm-helper", "direct", "warm-cli-process"])
def test_artifacts_disk_filling_mid_command_stops_the_remote_command(
    cli_env: dict[str, str],
    live_sshd: SshServer,
    known_hosts: Path,
    small_disk: Path,
    tmp_path: Path,
    path: str,
) -> None:
    """The disk under artifacts.out_dir fills while a command streams into stdout.txt: the job
    failed with exit 74 but the command ran on, on the VM, to its end (here 50 s; a day's
    deadline at most), and the error named the temporary file (`.tmp-stdout.txt.<tag>`). The
    command is now stopped (its process tree killed, as on cancel) and stdout.txt is named."""
    env = {
        **cli_env,
        **live_sshd.env(known_hosts),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(small_disk / "art"),
        "WIN_AUTOMATION_SSH_PERSIST": "0" if path == "direct" else "10m",
        "WIN_AUTOMATION_CLI_SERVER": "1" if path == "warm-cli-process" else "0",
    }
    if path == "warm-cli-process":
        _start_warm_cli_process(env, tmp_path)
    marker = f"hdisk-{os.getpid()}-{path}"
    script = (
        f"for i in $(seq 1 200); do head -c 100000 /dev/urandom | base64; sleep 0.25; done; echo {marker}"
    )
    started = time.monotonic()
    res = subprocess.run(
        [*WA, "ssh", "run", "--shell", "cmd", "--", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=100,
    )
    assert res.returncode == 74, res.stderr
    assert time.monotonic() - started < 30  # stopped, not run to its end (50 s)
    record = jobs(env)[0]
    job = small_disk / "art" / record["job_id"]
    assert res.stderr.endswith(
        f"error: step exec: artifacts.out_dir: cannot write {job / 'stdout.txt'}: No space left on device\n"
    ), res.stderr
    deadline = time.monotonic() + 15
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(marker), "the remote command still runs"
    assert record["state"] == "failed" and record["exit_code"] == 74, record


def test_an_error_while_an_artifact_is_written_is_not_replaced_by_its_buffers_full_disk(
    small_disk: Path,
) -> None:
    """What ends an artifact's writing (a stopped command, a failed step) stands, even when the
    disk is full and the file's buffered rest cannot be written as it is closed: that close's
    ENOSPC came out instead (`step exec: OSError: [Errno 28]`, exit 1), and only when the buffer
    held something (the warm CLI process's test failed by chance)."""
    writer = ArtifactWriter(small_disk / "art", new_job_id(), "0" * 32, types=("ssh",))
    fill(small_disk)
    with pytest.raises(RuntimeError, match="the step's own error"), writer.open("ssh", "stdout.txt") as out:
        out.write(b"x" * 100)  # buffered: the full disk is not seen yet
        raise RuntimeError("the step's own error")
    assert not [p for p in writer.folder.iterdir() if p.name.startswith(".tmp-")]


def test_jobs_list_and_show_read_a_journal_on_a_read_only_disk_as_it_is(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A journal whose file system turned read-only (remounted ro after a disk error, a snapshot)
    could not be listed (exit 74): `jobs list`/`show` now read it read-only, as it is, with one
    note: a job of an owner killed meanwhile (its -wal holds the job) shows as it was left, not
    marked interrupted, and nothing is written there. Job commands still refuse it (exit 74)."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        env = {"WIN_AUTOMATION_DATA_DIR": str(disk / "data"), "WIN_AUTOMATION_CLI_SERVER": "0"}
        done = json.loads(cli("run", "ping", "--json", env=env).stdout)["job_id"]
        held = subprocess.Popen(
            [sys.executable, "-m", "win_automation", "run", "ping", "--input", '{"hold_seconds": 30}'],
            env={**cli_env, **env},
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while len(json.loads(cli("jobs", "list", "--json", env=env).stdout)) < 2:
                assert time.monotonic() < deadline, "the second job never started"
                time.sleep(0.1)
        finally:
            held.kill()  # its -wal and -shm stay, holding its job `running`
            held.wait()
        files = sorted(p.name for p in (disk / "data").iterdir())
        assert "journal.sqlite3-wal" in files
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        listed = cli("jobs", "list", "--json", env=env)
        assert listed.code == 0, listed.stderr
        states = {j["job_id"]: j["state"] for j in json.loads(listed.stdout)}
        assert states[done] == "succeeded" and sorted(states.values()) == ["running", "succeeded"]
        assert listed.stderr.count("\n") == 1
        assert listed.stderr.startswith(f"note: read-only, as it is: the journal {disk / 'data'}")
        assert "the file system is read-only" in listed.stderr
        shown = cli("jobs", "show", done, "--json", env=env)
        assert shown.code == 0 and json.loads(shown.stdout)["state"] == "succeeded", shown.stderr
        assert sorted(p.name for p in (disk / "data").iterdir()) == files
        ran = cli("run", "ping", env=env)
        assert ran.code == 74 and "the file system is read-only" in ran.stderr


def test_jobs_list_with_no_journal_on_a_read_only_disk_is_still_one_line_74(
    cli, read_only_disk: Path
) -> None:  # type: ignore[no-untyped-def]
    res = cli("jobs", "list", env={"WIN_AUTOMATION_DATA_DIR": str(read_only_disk)})
    assert res.code == 74 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: the journal ")
