"""The local disk failing the CLI while it works: the data.dir (journal, the warm processes'
files) filling up or turning read-only before and during a job, corrupt files where the journal
or the warm processes' info files should be. Real file systems: a small tmpfs per test (root)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import stop_warm_helpers
from fixture_sshd import SshServer
from test_cli_faults import _start_warm_cli_process

WA = [sys.executable, "-m", "win_automation"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system (tmpfs) to fill."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        stop_warm_helpers(mount)
        subprocess.run(["umount", "-l", str(mount)], check=True)


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


@pytest.mark.parametrize(
    "path", ["in-process", "warm-cli-process", "run-ping"], ids=lambda p: str(p)
)
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
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 74, err
    lines = err.splitlines()
    assert lines[-1].startswith(f"error: the journal {small_disk / 'data' / 'journal.sqlite3'} cannot be used")
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
