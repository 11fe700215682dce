"""Shared fixtures: an isolated environment for the CLI and a way to run it as a real process."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A suite started with SIGINT ignored (`scripts/test.sh &` in a script, nohup) would hand that on
# to every process it starts (an ignored signal stays ignored across exec), and the tests of
# Ctrl-C would see none arrive: Ctrl-C is restored here, in each process that loads this file.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = [
    "fixture_jobs",
    "fixture_sshd",
    "fixture_hatchet",
    "fixture_endpoints",
    "fixture_playwright",
    "fixture_qemu",
    "fixture_dns",
]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session", autouse=True)
def no_warm_helper_outlives_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """CLI calls that no `cli` fixture ran (plain subprocesses) may have started helpers too."""
    yield
    stop_warm_helpers(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module", autouse=True)
def garbage_stays_with_its_module() -> Iterator[None]:
    """A module's leaked socket or file, collected in its last teardown: its ResourceWarning (an
    error, see pyproject.toml) names that module, not a test of the next file on this worker."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def no_warm_process_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """Job commands start a warm CLI process (and helpers) in the test's data dir: stop them."""
    yield
    stop_warm_helpers(tmp_path)


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A clean environment: no WIN_AUTOMATION_*/HATCHET_* from the caller, data under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
    env["WIN_AUTOMATION_DATA_DIR"] = str(tmp_path / "data")
    env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(tmp_path / "artifacts")
    env["HOME"] = str(tmp_path / "home")
    # Each call in its own process, as before the warm CLI process: one started per test (and
    # killed after it) costs more than it saves. tests/test_cli_server.py turns it on.
    env["WIN_AUTOMATION_CLI_SERVER"] = "0"
    yield env


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (`1m`) mounted at `mount` (made) for the block: a disk to fill."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def stop_warm_helpers(under: Path) -> None:
    """Kill the warm-connection helpers and warm CLI processes (ssh.persist) whose socket is
    under `under` (a data dir, or the session's temporary root), found by their command line: one
    started as a CLI exited may still be connecting or importing (no info file yet), or just
    forking away from its starter, so look until none is left."""

    needle = str(under).encode()
    for _ in range(20):
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes()
            except OSError:
                continue
            if (b"persist_helper" in args or b"win_automation.cli.server" in args) and needle in args:
                found.append(int(cmdline.parent.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


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
        stop_warm_helpers(tmp_path / data_dir)  # an absolute data_dir stays as it is
