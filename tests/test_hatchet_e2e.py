"""End to end on the fake Hatchet engine with the real `win-automation worker` process.

One worker serves the module (fixture_hatchet.hatchet_worker); the runs go through the real gRPC
protocol: registration, assignment over ListenV2, STARTED/COMPLETED/FAILED events, retries by
the engine, cancellation, and the CLI's `run --engine hatchet` / `jobs` commands.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_hatchet import HatchetWorld, WorkerProcess
from fixture_sshd import SshServer

from win_automation.jobs.ids import new_job_id
from workflows import all_workflows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hatchet_worker(hatchet_world: HatchetWorld, sshd: SshServer) -> Iterator[WorkerProcess]:
    """The module's worker, next to the real sshd on loopback (its VM)."""
    known_hosts = sshd.write_known_hosts(hatchet_world.root / "known_hosts")
    worker = hatchet_world.start_worker(
        "--slots", "20", "--label", "vm=loopback", "--grace", "10s", env=sshd.env(known_hosts)
    )
    yield worker
    code = worker.stop()
    assert code == 0, worker.log()[-3000:]


def journal_rows(world: HatchetWorld, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(world.data_dir / "journal.sqlite3", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_worker_registers_every_workflow_with_its_labels(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    engine = hatchet_world.engine
    worker = next(w for w in engine.workers.values() if w.name == "worker")
    expected = {f"{wf.name}:{step.name}" for wf in all_workflows().values() for step in wf.steps}
    assert worker.actions == expected
    assert worker.labels == {"vm": "loopback"}
    assert worker.slots == 20
    ping = engine.workflows["ping"]
    assert ping.tasks["check-journal"].parents == ["check-engine"]
    assert ping.tasks["write-artifact"].retries == 2
    # the worker logs in the project's key=value schema, the SDK's own lines included
    lines = [line for line in hatchet_worker.log().splitlines() if line.strip()]
    assert lines and all(line.startswith("ts=") and " level=" in line for line in lines), lines[:5]
    assert engine.token not in hatchet_worker.log()


def test_run_on_hatchet_through_the_cli_waits_and_journals(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    result = hatchet_world.cli("run", "ping", "--engine", "hatchet", "--json", "--input", '{"message": "hi"}')
    assert result.code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["state"] == "succeeded"
    assert outcome["outputs"]["check-journal"]["message"] == "hi"
    job_id = outcome["job_id"]
    [job] = journal_rows(hatchet_world, "SELECT * FROM jobs WHERE job_id = ?", job_id)
    assert job["engine"] == "hatchet" and job["state"] == "succeeded"
    run = hatchet_world.engine.runs[job["external_id"]]
    assert run.status == "COMPLETED" and run.metadata["job_id"] == job_id
    steps = journal_rows(hatchet_world, "SELECT name, state FROM steps WHERE job_id = ?", job_id)
    assert {(s["name"], s["state"]) for s in steps} == {
        ("check-engine", "succeeded"),
        ("check-journal", "succeeded"),
        ("write-artifact", "succeeded"),
    }
    manifest = json.loads((hatchet_world.artifacts / job_id / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["ping.json"]
    # the task payload stays small: a path and a hash, not the file
    assert set(run.tasks["write-artifact"].output) == {"message", "path", "size_bytes", "sha256"}
    listed = hatchet_world.cli("jobs", "list", "--json")
    assert listed.code == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["job_id"] == job_id)
    assert (row["engine"], row["state"], row["steps_done"]) == ("hatchet", "succeeded", 3)
    shown = hatchet_world.cli("jobs", "show", job_id, "--json")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["external_id"] == job["external_id"]


def test_a_job_command_on_hatchet_never_starts_the_whole_sdk(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    """Its config, connection and gRPC contracts only (win_automation.engines.hatchet): the SDK's
    package start-up (its REST client, its worker: 1.5-3 s of CPU) is not paid by a job command."""
    code = (  # the CLI ends with os._exit (win_automation.cli.finish), after the atexit handlers
        "import atexit, runpy, sys\n"
        "sys.argv = ['win-automation', 'run', 'ping', '--engine', 'hatchet', '--json']\n"
        "atexit.register(lambda: print('SDK', 'grpc' in sys.modules, sorted(m for m in sys.modules if"
        " m.startswith(('hatchet_sdk.clients.rest', 'hatchet_sdk.hatchet', 'hatchet_sdk.worker')))))\n"
        "runpy.run_module('win_automation', run_name='__main__')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**hatchet_world.env, "WIN_AUTOMATION_CLI_SERVER": "0"},  # in this process: its imports
        cwd=hatchet_world.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and '"state": "succeeded"' in run.stdout, run.stderr
    assert run.stdout.splitlines()[-1] == "SDK True []"


def test_an_artifact_folder_that_cannot_be_made_fails_once_with_74(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    """Not transient (a retry would meet the same file): the engine does not retry it (transient
    failures are: tests/test_conformance.py's flaky step, on this engine too)."""
    engine = hatchet_world.engine
    job_id = new_job_id()
    blocker = hatchet_world.artifacts / job_id
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the job's artifact folder should be")  # mkdir fails: OSError
    run_id = engine.trigger("ping", {"message": "no retry"}, {"job_id": job_id})
    run = engine.wait_run(run_id, timeout=30)
    assert run.status == "FAILED", engine.describe(run_id)
    failed = [e for e in engine.task_events(run_id, "write-artifact") if e.type == "FAILED"]
    assert [e.retry_count for e in failed] == [0]
    [step] = journal_rows(
        hatchet_world,
        "SELECT attempts, state, error_code, error FROM steps WHERE job_id = ? AND name = 'write-artifact'",
        job_id,
    )
    assert (step["attempts"], step["state"], step["error_code"]) == (1, "failed", 74)
    assert step["error"].startswith(f"artifacts.out_dir: cannot write {blocker}"), step["error"]
    assert blocker.is_file()


def test_cancellation_reaches_a_running_step(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    engine = hatchet_world.engine
    queued = hatchet_world.cli(
        "run", "ping", "--engine", "hatchet", "--no-wait", "--json", "--input", '{"hold_seconds": 60}'
    )
    assert queued.code == 0, queued.stderr
    ids = json.loads(queued.stdout)
    job_id, run_id = ids["job_id"], ids["run_id"]
    engine.wait_until(
        lambda: engine.runs[run_id].tasks["check-journal"].status == "RUNNING",
        timeout=30,
        what="check-journal",
    )
    started = time.monotonic()
    cancelled = hatchet_world.cli("jobs", "cancel", job_id, "--wait", "20s")
    assert cancelled.code == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    run = engine.wait_run(run_id, timeout=10)
    assert run.status == "CANCELLED"
    [job] = journal_rows(hatchet_world, "SELECT state FROM jobs WHERE job_id = ?", job_id)
    assert job["state"] == "cancelled"
    # the step itself saw the cancel (ctx.cancelled()) long before its 60 s hold ended
    deadline = time.monotonic() + 10
    while "step cancelled" not in hatchet_worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"job_id={job_id}" in hatchet_worker.log()
    assert "step cancelled" in hatchet_worker.log()
    assert time.monotonic() - started < 30
    [step] = journal_rows(
        hatchet_world, "SELECT state FROM steps WHERE job_id = ? AND name = 'check-journal'", job_id
    )
    assert step["state"] == "cancelled"


def test_two_hundred_concurrent_runs_all_complete_once(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    engine = hatchet_world.engine
    jobs = {new_job_id(): None for _ in range(200)}
    run_ids = {engine.trigger("ping", {"message": job_id}, {"job_id": job_id}): job_id for job_id in jobs}
    for run_id in run_ids:
        assert engine.wait_run(run_id, timeout=100).status == "COMPLETED", engine.describe(run_id)
    placeholders = ",".join("?" * len(run_ids))
    rows = journal_rows(
        hatchet_world,
        f"SELECT job_id, external_id, state FROM jobs WHERE external_id IN ({placeholders})",
        *run_ids,
    )
    assert len(rows) == 200
    assert {r["external_id"]: r["job_id"] for r in rows} == run_ids
    assert {r["state"] for r in rows} == {"succeeded"}
    steps = journal_rows(
        hatchet_world,
        f"SELECT state, attempts FROM steps WHERE job_id IN ({placeholders})",
        *run_ids.values(),
    )
    assert len(steps) == 600 and {(s["state"], s["attempts"]) for s in steps} == {("succeeded", 1)}
    completed = [
        e
        for e in engine.events
        if e.type == "COMPLETED"
        and e.accepted
        and e.task_run_id in {t.id for rid in run_ids for t in engine.runs[rid].tasks.values()}
    ]
    assert len(completed) == 600
    assert all(Path(hatchet_world.artifacts / job_id / "ping.json").is_file() for job_id in run_ids.values())


def test_ssh_run_on_hatchet_runs_both_steps_against_the_real_sshd(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    result = hatchet_world.cli(
        "ssh",
        "run",
        "--engine",
        "hatchet",
        "--json",
        "--idempotent",
        "--idempotent-check",
        "exit 1",
        "--",
        "Write-Output",
        "hello-from-hatchet",
    )
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert "hello-from-hatchet" in out["stdout"] and out["exit_code"] == 0 and not out["skipped"]
    job_id = out["job_id"]
    [job] = journal_rows(hatchet_world, "SELECT * FROM jobs WHERE job_id = ?", job_id)
    run = hatchet_world.engine.runs[job["external_id"]]
    assert run.workflow.name == "ssh-exec" and run.status == "COMPLETED"
    assert run.tasks["check"].output["checked"] is True and run.tasks["check"].output["passed"] is False
    folder = hatchet_world.artifacts / job_id
    assert "hello-from-hatchet" in (folder / "stdout.txt").read_text()
    assert (folder / "exit_code.txt").read_text().strip() == "0"


def test_ssh_run_on_hatchet_exits_with_the_remote_exit_code(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    result = hatchet_world.cli("ssh", "run", "--engine", "hatchet", "--json", "--", "exit 7")
    assert result.code == 7, result.stderr
    # the worker runs on this host: its journal holds the failed command's result for the trigger
    data = json.loads(result.stdout)
    assert data["exit_code"] == 7 and "exit 7" in data["stdout"]
    (job,) = [
        j
        for j in json.loads(hatchet_world.cli("jobs", "list", "--json").stdout)
        if j["job_id"] == data["job_id"]
    ]
    assert (job["state"], job["exit_code"]) == ("failed", 7)


def test_an_idempotent_ssh_run_on_hatchet_that_has_nothing_to_do_is_skipped(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess
) -> None:
    result = hatchet_world.cli(
        "ssh",
        "run",
        "--engine",
        "hatchet",
        "--idempotent",
        "--idempotent-check",
        "exit 0",
        "--",
        "Write-Output",
        "x",
    )
    assert result.code == 0, result.stderr
    assert "skipped: the idempotency check passed" in result.stderr
    [job] = journal_rows(
        hatchet_world, "SELECT * FROM jobs WHERE workflow = 'ssh-exec' ORDER BY created_at DESC"
    )[:1]
    assert job["state"] == "skipped"
    assert hatchet_world.engine.runs[job["external_id"]].status == "COMPLETED"
