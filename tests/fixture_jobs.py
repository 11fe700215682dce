"""Fixtures for the job runtime: a config on temp dirs, a real child process running the
test workflows of tests/jobs_child.py (`jobs_child` fixture), and another process holding the
journal locked (`JournalLock`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from win_automation.config import Config, load_config

CHILD = Path(__file__).with_name("jobs_child.py")


@pytest.fixture
def jobs_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The clean environment of tests/conftest.py: data and artifacts under tmp_path."""
    return cli_env


@pytest.fixture
def jobs_config(jobs_env: dict[str, str]) -> Config:
    return load_config(None, jobs_env).config


@pytest.fixture
def jobs_child(jobs_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `python tests/jobs_child.py ARGS...` as a real process (killed at teardown)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            env=jobs_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


HOLD_THE_JOURNAL = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class JournalLock:
    """Another process holding the journal at `path` locked (BEGIN EXCLUSIVE) from its creation
    until `release()` (or the end of a `with` block)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_JOURNAL, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        try:
            assert self.stdout.readline() == "held\n"
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if not self.stdin.closed:
            self.stdin.write("\n")
            self.stdin.close()
        self.proc.wait(timeout=60)
        self.stdout.close()

    def __enter__(self) -> JournalLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def list_jobs(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """`jobs list --json` in a process of its own (in-process, as without the warm CLI process)."""
    out = subprocess.run(
        [sys.executable, "-m", "win_automation", "jobs", "list", "--json"],
        env={**env, "WIN_AUTOMATION_CLI_SERVER": "0"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return list(json.loads(out.stdout))
