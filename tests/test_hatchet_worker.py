"""The worker process's own behaviour on the fake engine: SIGTERM drains it (running steps finish,
no new ones start, exit 0), a grace period bounds the drain, and an SSH authentication failure
is reported as non-retryable and not retried. This module has its own engine and workers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from fixture_hatchet import HatchetWorld
from fixture_sshd import SshServer

from win_automation.jobs.ids import new_job_id

pytestmark = pytest.mark.slow


def test_sigterm_drains_the_worker(hatchet_world: HatchetWorld) -> None:
    engine = hatchet_world.engine
    worker = hatchet_world.start_worker(
        "--slots", "4", "--grace", "20s", "--metrics", "--metrics-interval", "1s", name="drainer"
    )
    run_id = engine.trigger("ping", {"message": "drain", "hold_seconds": 2}, {"job_id": new_job_id()})
    engine.wait_until(lambda: engine.runs[run_id].tasks["check-journal"].status == "RUNNING", what="hold")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.log()[-3000:]
    assert 1.0 < time.monotonic() - started < 25  # it waited for the held step, then left
    run = engine.runs[run_id]
    # the running step finished and was reported; the next one was not taken after the signal
    assert run.tasks["check-journal"].status == "COMPLETED"
    assert run.tasks["write-artifact"].status == "QUEUED"
    drained = next(w for w in engine.workers.values() if w.name == "drainer")
    assert drained.id in engine.paused_via_rest and drained.paused
    assert "draining: no new steps, finishing running ones" in worker.log()
    assert "metric=jobs_enqueued_total value=1 " in worker.stdout()  # the last round, on exit
    assert engine.token not in worker.log() + worker.stdout()


def test_the_grace_period_bounds_the_drain_and_the_engine_takes_the_step_back(
    hatchet_world: HatchetWorld,
) -> None:
    engine = hatchet_world.engine
    engine.worker_timeout = 1.0
    worker = hatchet_world.start_worker("--slots", "4", "--grace", "1s", name="impatient")
    run_id = engine.trigger("ping", {"message": "slow", "hold_seconds": 60}, {"job_id": new_job_id()})
    engine.wait_until(lambda: engine.runs[run_id].tasks["check-journal"].status == "RUNNING", what="hold")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(30)
    assert code != 0 and time.monotonic() - started < 15, worker.log()[-3000:]
    assert "grace period over" in worker.log()
    engine.wait_until(
        lambda: engine.runs[run_id].tasks["check-journal"].status == "QUEUED",
        timeout=20,
        what="the engine to release the dead worker's step",
    )
    engine.cancel([run_id])  # not for the next test's worker


def test_an_ssh_authentication_failure_is_not_retried(
    hatchet_world: HatchetWorld, sshd: SshServer, tmp_path: Path
) -> None:
    engine = hatchet_world.engine
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")
    worker = hatchet_world.start_worker(
        "--slots", "2", name="wrong-key", env=sshd.env(known_hosts, key_file=str(stranger))
    )
    try:
        result = hatchet_world.cli("ssh", "run", "--engine", "hatchet", "--", "Write-Output", "never")
        assert result.code == 4, result.stderr
        assert "authentication" in result.stderr and "Traceback" not in result.stderr
        [run] = [r for r in engine.runs.values() if r.workflow.name == "ssh-exec"]
        failed = [e for e in engine.task_events(run.id, "exec") if e.type == "FAILED"]
        assert len(failed) == 1 and failed[0].should_not_retry
        assert "[exit 4]" in failed[0].payload
        assert run.tasks["exec"].retry_count == 0 and run.status == "FAILED"
        assert run.tasks["check"].status == "COMPLETED"
    finally:
        assert worker.stop() == 0
