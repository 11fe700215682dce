"""GUI jobs keep the VM's screen (before.png, after.png, failure-STEP.png) on both engines, and a job
can start from a snapshot: against a real QEMU (tests/fixture_qemu.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fixture_qemu import SCREEN, QemuVm
from pydantic import BaseModel

from win_automation.adapters.qemu import qmp_session
from win_automation.artifacts.store import verify_folder
from win_automation.config import Config, load_config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.dispatch import run_job
from win_automation.engines.hatchet.runtime import StepFailure, TaskRuntime
from win_automation.errors import CommandFailed, NotFoundError, UsageError
from win_automation.jobs.journal import Journal
from win_automation.operations.qemu import Qemu, png_size


class In(BaseModel):
    fail: bool = False


class Out(BaseModel):
    ok: bool = True


def look(inp: In, ctx: StepContext) -> Out:
    return Out()


def act(inp: In, ctx: StepContext) -> Out:
    if inp.fail:
        raise CommandFailed("the GUI did not answer")
    return Out()


desktop = Workflow(
    name="desktop-shots", input=In, gui=True, steps=(Step("look", look, Out), Step("act", act, Out))
)
headless = Workflow(name="headless", input=In, steps=(Step("look", look, Out),))


def screens(config: Config, job_id: str) -> dict[str, tuple[int, int]]:
    folder = config.artifacts.out_dir / job_id
    manifest = verify_folder(folder)  # every file matches its size and sha256
    return {e.path: png_size(folder / e.path) for e in manifest.artifacts if e.type == "screen"}


@pytest.fixture
def config(qemu_vm: QemuVm, cli_env: dict[str, str]) -> Config:
    return load_config(None, {**cli_env, **qemu_vm.env()}).config


def test_local_gui_job_keeps_before_after_and_failure(config: Config) -> None:
    ok = run_job(config, desktop, In(), engine="local")
    assert screens(config, ok.job_id) == {"before.png": SCREEN, "after.png": SCREEN}
    failed = run_job(config, desktop, In(fail=True), engine="local")
    assert failed.exit_code == 1
    assert screens(config, failed.job_id) == {
        "before.png": SCREEN,
        "failure-act.png": SCREEN,
        "after.png": SCREEN,
    }
    plain = run_job(config, headless, In(), engine="local")
    assert not (config.artifacts.out_dir / plain.job_id / "before.png").exists()


def test_no_screens_without_qmp_and_none_lost_when_qemu_is_gone(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    plain = load_config(None, cli_env).config
    outcome = run_job(plain, desktop, In(), engine="local")
    assert outcome.exit_code == 0 and not (plain.artifacts.out_dir / outcome.job_id).exists()
    gone = load_config(None, {**cli_env, "WIN_AUTOMATION_VM_QMP_SOCKET": str(tmp_path / "gone.sock")}).config
    outcome = run_job(gone, desktop, In(), engine="local")
    assert outcome.exit_code == 0  # evidence that cannot be taken never fails the job
    assert not (gone.artifacts.out_dir / outcome.job_id / "before.png").exists()


def test_hatchet_runtime_keeps_the_same_screens(config: Config) -> None:
    runtime = TaskRuntime(config)
    try:
        common = {"metadata": {}, "retry_count": 0, "cancel": threading.Event()}
        first = runtime.run_step(
            desktop, desktop.steps[0], In(fail=True), run_id="run-1", parents={}, **common
        )
        with pytest.raises(StepFailure):
            runtime.run_step(
                desktop, desktop.steps[1], In(fail=True), run_id="run-1", parents={"look": first}, **common
            )
        job = runtime.journal.find_external("hatchet", "run-1")
        assert job is not None
        assert screens(config, job.job_id) == {"before.png": SCREEN, "failure-act.png": SCREEN}
        first = runtime.run_step(desktop, desktop.steps[0], In(), run_id="run-2", parents={}, **common)
        runtime.run_step(desktop, desktop.steps[1], In(), run_id="run-2", parents={"look": first}, **common)
        job = runtime.journal.find_external("hatchet", "run-2")
        assert job is not None
        assert screens(config, job.job_id) == {"before.png": SCREEN, "after.png": SCREEN}
    finally:
        runtime.close()


def hmp(qemu_vm: QemuVm, line: str) -> str:
    with qmp_session(qemu_vm.socket, timeout=10) as qmp:
        return str(qmp.execute("human-monitor-command", {"command-line": line}))


def test_a_job_from_a_snapshot_starts_from_its_state(config: Config, qemu_vm: QemuVm) -> None:
    qemu = Qemu(config)
    qemu.snapshot_save("clean-state")
    try:
        hmp(qemu_vm, 'qemu-io scratch "write -P 0xcd 0 64k"')  # the VM changed since the snapshot
        outcome = run_job(config, headless, In(), engine="local", snapshot="clean-state")
        assert outcome.exit_code == 0
        assert "verification failed" not in hmp(qemu_vm, 'qemu-io scratch "read -P 0 0 64k"')
    finally:
        qemu.snapshot_delete("clean-state")


def test_from_a_missing_snapshot_nothing_is_recorded(config: Config) -> None:
    with pytest.raises(NotFoundError, match="snapshot 'nope' does not exist"):
        run_job(config, headless, In(), engine="local", snapshot="nope")
    with pytest.raises(UsageError, match="only with the local engine"):
        run_job(config, headless, In(), engine="hatchet", snapshot="nope")
    with Journal.open(config.data.dir) as journal:
        assert journal.list_jobs() == []


def test_run_from_snapshot_on_the_cli(qemu_vm: QemuVm, cli) -> None:  # type: ignore[no-untyped-def]
    env = qemu_vm.env()
    done = cli("run", "ping", "--from-snapshot", "absent", env=env)
    assert done.code == 1 and done.stderr.strip().endswith("does not exist (snapshots: none)")
    assert cli("vm", "snapshot", "save", "base", env=env).code == 0
    try:
        done = cli("run", "ping", "--from-snapshot", "base", "--json", env=env)
        assert done.code == 0 and json.loads(done.stdout)["state"] == "succeeded"
        bad = cli("run", "ping", "--from-snapshot", "base", "--no-wait", env=env)
        assert bad.code == 2 and "--from-snapshot" in bad.stderr
    finally:
        assert cli("vm", "snapshot", "delete", "base", env=env).code == 0
