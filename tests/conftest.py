"""Shared fixtures: an isolated environment for the CLI and a way to run it as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "fixture_jobs",
    "fixture_sshd",
    "fixture_hatchet",
    "fixture_endpoints",
    "fixture_playwright",
    "fixture_qemu",
]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A clean environment: no WIN_AUTOMATION_*/HATCHET_* from the caller, data under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
    env["WIN_AUTOMATION_DATA_DIR"] = str(tmp_path / "data")
    env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(tmp_path / "artifacts")
    env["HOME"] = str(tmp_path / "home")
    yield env


def stop_warm_helpers(data_dir: Path) -> None:
    """Kill the warm-connection helpers (ssh.persist) that a test's CLI calls left running."""
    import json
    import signal

    for info in (data_dir / "ssh-persist").glob("*.json"):
        try:
            pid = json.loads(info.read_text())["pid"]
            if b"persist_helper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `win-automation ARGS...` as a subprocess; returns Run(code, stdout, stderr). Warm
    connection helpers its job commands started are stopped after the test."""

    data_dirs = {cli_env["WIN_AUTOMATION_DATA_DIR"]}

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
    ) -> Run:
        data_dirs.add((env or {}).get("WIN_AUTOMATION_DATA_DIR", cli_env["WIN_AUTOMATION_DATA_DIR"]))
        proc = subprocess.run(
            [sys.executable, "-m", "win_automation", *args],
            env={**cli_env, **(env or {})},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    yield run
    for data_dir in data_dirs:
        stop_warm_helpers(Path(data_dir))
