"""Snapshots that take longer than vm.qmp_timeout, against a real QEMU whose RAM holds random bytes
(tests/fixture_qemu.py, `random_mib`): QEMU's monitor is silent while it saves or loads, so the wait
is bounded by vm.snapshot_timeout; a wait that gives up says QEMU may still complete the job, and
the next snapshot command dismisses that job; a `--from-snapshot` job whose load fails ends failed
and is not resumed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_qemu import QemuVm, start_qemu

from win_automation.adapters.qemu import qmp_session
from win_automation.config import Config, load_config
from win_automation.errors import OperationTimeout
from win_automation.jobs.journal import Journal
from win_automation.operations.qemu import Qemu

RANDOM_MIB = 300  # a save or a load of about 0.5 s
MAY_COMPLETE = (
    r"did not conclude within 0\.5s \(vm\.snapshot_timeout\); QEMU may still complete it:"
    r" check `win-automation vm snapshot list`"
)


@pytest.fixture(scope="module")
def slow_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuVm]:
    vm = start_qemu(Path(tmp_path_factory.mktemp("slow-qemu")), random_mib=RANDOM_MIB)
    try:
        yield vm
    finally:
        vm.stop()


def config_for(cli_env: dict[str, str], vm: QemuVm, **extra: str) -> Config:
    return load_config(None, {**cli_env, **vm.env(), **extra}).config


def our_jobs(vm: QemuVm) -> list[str]:
    with qmp_session(vm.socket, timeout=10) as qmp:
        return [j["id"] for j in qmp.execute("query-jobs") if j["id"].startswith("wa-")]


def settle(config: Config) -> list[str]:
    """The snapshots once QEMU answers again (a patient monitor timeout): this dismisses the jobs
    of commands that gave up."""
    patient = config.model_copy(update={"vm": config.vm.model_copy(update={"qmp_timeout": 10.0})})
    return [s.name for s in Qemu(patient).snapshots()]


def test_save_and_load_longer_than_the_qmp_timeout(slow_vm: QemuVm, cli) -> None:  # type: ignore[no-untyped-def]
    env = {**slow_vm.env(), "WIN_AUTOMATION_VM_QMP_TIMEOUT": "100ms"}
    for verb in ("save", "load", "delete"):
        done = cli("vm", "snapshot", verb, "long", "--json", env=env)
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "long"
    assert our_jobs(slow_vm) == []


def test_qemu_stopped_mid_save_then_continued(slow_vm: QemuVm, cli_env: dict[str, str]) -> None:
    """SIGSTOP during the save, SIGCONT 1.5 s later: the save completes (vm.qmp_timeout is 0.3 s)."""
    qemu = Qemu(config_for(cli_env, slow_vm, WIN_AUTOMATION_VM_QMP_TIMEOUT="300ms"))
    result: list[object] = []
    saving = threading.Thread(target=lambda: result.append(_outcome(qemu.snapshot_save, "paused")))
    saving.start()
    time.sleep(0.15)  # connected, checked, saving
    os.kill(slow_vm.process.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
    finally:
        os.kill(slow_vm.process.pid, signal.SIGCONT)
    saving.join(10)
    assert [getattr(r, "name", r) for r in result] == ["paused"]
    qemu.snapshot_delete("paused")


def _outcome(fn, name: str) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(name)
    except Exception as exc:
        return exc


def test_a_save_that_gives_up_may_complete_and_is_dismissed_later(
    slow_vm: QemuVm, cli_env: dict[str, str]
) -> None:
    """vm.snapshot_timeout 0.5 s, QEMU stopped 2 s mid-save: the error says the job may still
    complete; once QEMU runs again it does, and the next snapshot command dismisses its job."""
    config = config_for(
        cli_env, slow_vm, WIN_AUTOMATION_VM_QMP_TIMEOUT="300ms", WIN_AUTOMATION_VM_SNAPSHOT_TIMEOUT="500ms"
    )
    stopper = threading.Timer(0.15, os.kill, (slow_vm.process.pid, signal.SIGSTOP))
    stopper.start()
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match=MAY_COMPLETE) as raised:
            Qemu(config).snapshot_save("late")
        assert time.monotonic() - started < 2 and "\n" not in str(raised.value)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    finally:
        stopper.join()
        os.kill(slow_vm.process.pid, signal.SIGCONT)
    assert settle(config) == ["late"]  # QEMU completed it
    assert our_jobs(slow_vm) == []  # and its concluded job was dismissed
    Qemu(config_for(cli_env, slow_vm)).snapshot_delete("late")


def test_a_job_whose_snapshot_does_not_load_fails_and_is_not_resumed(
    slow_vm: QemuVm, cli_env: dict[str, str], cli
) -> None:  # type: ignore[no-untyped-def]
    env = {**slow_vm.env(), "WIN_AUTOMATION_VM_SNAPSHOT_TIMEOUT": "100ms"}
    config = config_for(cli_env, slow_vm)
    Qemu(config).snapshot_save("base")
    try:
        done = cli("run", "ping", "--from-snapshot", "base", env=env)
        assert done.code == 124 and "QEMU may still complete it" in done.stderr, done.stderr
        with Journal.open(config.data.dir) as journal:
            (job,) = journal.list_jobs()
        assert job.state == "failed" and (job.error or "").startswith("snapshot not loaded 'base': ")
        assert settle(config) == ["base"] and our_jobs(slow_vm) == []
        resumed = cli("jobs", "resume", job.job_id, env=slow_vm.env())
        assert resumed.code == 2 and "a resume would not load it" in resumed.stderr, resumed.stderr
        with Journal.open(config.data.dir) as journal:
            assert journal.get_job(job.job_id).state == "failed"
    finally:
        Qemu(config).snapshot_delete("base")
