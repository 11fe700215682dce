"""Fixtures for the Hatchet tests: the fake engine (tests/fake_hatchet.py) and real worker processes.

- `hatchet_engine` (module): a running `FakeHatchet` on loopback.
- `hatchet_world` (module): the environment a worker and the CLI share (token, host:port,
  `HATCHET_CLIENT_TLS_STRATEGY=none`, data and artifact folders of their own), with `cli(...)` to
  run `win-automation` as a subprocess and `start_worker(...)` to start `win-automation worker`.
- `hatchet_worker` (module): one running worker (label `vm=loopback`, 20 slots) for the module's
  tests, drained with SIGTERM at the end (its exit code is checked).

hatchet_sdk costs about 2.5 s to import per process, so tests share one worker per module, and this
module imports the fake engine (and with it hatchet_sdk) only when a fixture is used.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fake_hatchet import FakeHatchet

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.log_path.with_suffix(".out").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"worker did not stop within {timeout}s:\n{self.log()[-3000:]}") from None


@dataclass
class HatchetWorld:
    engine: FakeHatchet
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliRun:
        proc = subprocess.run(
            [sys.executable, "-m", "win_automation", *args],
            env={**self.env, **(env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliRun(proc.returncode, proc.stdout, proc.stderr)

    def start_worker(
        self, *args: str, name: str = "worker", env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProcess:
        log_path = self.root / f"{name}.log"
        before = set(self.engine.workers)
        with log_path.open("wb") as log_file, log_path.with_suffix(".out").open("wb") as out_file:
            proc = subprocess.Popen(  # the installed command, as users run it (see scripts/win-automation)
                [str(Path(sys.executable).parent / "win-automation"), "worker", "--name", name, *args],
                env={**self.env, **(env or {})},
                cwd=self.root,
                stdout=out_file,
                stderr=log_file,
            )
        worker = WorkerProcess(proc, log_path)
        if wait:
            deadline = time.monotonic() + 60
            while not any(
                w.listening and w.id not in before and w.name == name
                for w in list(self.engine.workers.values())
            ):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"worker {name} did not register:\n{worker.log()[-3000:]}")
                time.sleep(0.05)
        return worker


def world_env(engine: FakeHatchet, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
    env.update(engine.env())
    env.update(
        {
            "WIN_AUTOMATION_DATA_DIR": str(root / "data"),
            "WIN_AUTOMATION_ARTIFACT_OUT": str(root / "artifacts"),
            "HOME": str(root / "home"),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture(scope="module")
def hatchet_engine() -> Iterator[FakeHatchet]:
    from fake_hatchet import FakeHatchet  # imports hatchet_sdk (~2.5 s): only where needed

    engine = FakeHatchet().start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def hatchet_world(hatchet_engine: FakeHatchet, tmp_path_factory: pytest.TempPathFactory) -> HatchetWorld:
    root = tmp_path_factory.mktemp("hatchet")
    (root / "home").mkdir()
    return HatchetWorld(hatchet_engine, root, world_env(hatchet_engine, root))


@pytest.fixture(scope="module")
def hatchet_worker(hatchet_world: HatchetWorld) -> Iterator[WorkerProcess]:
    worker = hatchet_world.start_worker("--slots", "20", "--label", "vm=loopback", "--grace", "10s")
    yield worker
    code = worker.stop()
    assert code == 0, worker.log()[-3000:]
