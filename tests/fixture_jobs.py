"""Fixtures for the job runtime: a config on temp dirs, and a real child process running the
test workflows of tests/jobs_child.py (`jobs_child` fixture)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
