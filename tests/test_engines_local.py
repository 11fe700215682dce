"""The local engine with real journals and real child processes: checkpoints and resume, kill -9,
cancel from another process, retries and timeouts, and the per-VM GUI lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixture_jobs import JournalLock, wait_for
from pydantic import BaseModel

from win_automation import metrics
from win_automation.artifacts.store import verify_folder
from win_automation.config import Config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.local import LocalEngine
from win_automation.errors import ConnectError, StorageError, UsageError
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState
from win_automation.jobs.storage import JOURNAL_FILE
from workflows import all_workflows

Child = Callable[..., subprocess.Popen[str]]


def runs(data: Path) -> list[str]:
    path = data / "runs.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def only_job(data: Path) -> str:
    with Journal.open(data, recover=False) as journal:
        jobs = journal.list_jobs()
    assert len(jobs) == 1
    return jobs[0].job_id


def test_ping_runs_end_to_end_and_counts(jobs_config: Config) -> None:
    metrics.reset()
    ping = all_workflows()["ping"]
    engine = LocalEngine(jobs_config)
    outcome = engine.run(ping, ping.parse_input('{"message": "hello"}'))
    assert outcome.state == JobState.SUCCEEDED and outcome.exit_code == 0
    assert outcome.outputs["write-artifact"].model_dump()["message"] == "hello"
    journal_check = outcome.outputs["check-journal"].model_dump()
    assert (journal_check["job_recorded"], journal_check["job_state"]) == (True, "running")
    folder = jobs_config.artifacts.out_dir / outcome.job_id
    manifest = verify_folder(folder)
    assert (manifest.job_id, manifest.trace_id) == (outcome.job_id, outcome.trace_id)
    assert [a.path for a in manifest.artifacts] == ["ping.json"]
    steps = engine.journal.steps(outcome.job_id)
    assert [(s.name, s.state, s.attempts) for s in steps] == [
        ("check-engine", JobState.SUCCEEDED, 1),
        ("check-journal", JobState.SUCCEEDED, 1),
        ("write-artifact", JobState.SUCCEEDED, 1),
    ]
    assert metrics.snapshot()["jobs_enqueued_total"] == 1 and metrics.snapshot()["jobs_completed_total"] == 1
    with pytest.raises(
        UsageError, match=r"--input\.hold_seconds: Input should be greater than or equal to 0"
    ):
        ping.parse_input('{"hold_seconds": -1}')
    with pytest.raises(UsageError, match=r"--input\.colour: unknown field"):
        ping.parse_input('{"colour": 1}')


def test_a_failed_step_resumes_without_rerunning_finished_steps(
    jobs_child: Child, jobs_env: dict[str, str]
) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "fail").touch()
    first = jobs_child("run", "gated")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 1, err
    result = json.loads(out)
    assert result["state"] == "failed" and "step middle: the fail marker is present" in result["error"]
    job_id = result["job_id"]
    with Journal.open(data) as journal:
        assert [s.state for s in journal.steps(job_id)] == [
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.SKIPPED,
        ]
    assert runs(data) == ["first", "middle"]  # CommandFailed is not transient: one attempt
    (data / "fail").unlink()
    second = jobs_child("resume", job_id)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    resumed = json.loads(out)
    assert resumed["state"] == "succeeded" and resumed["outputs"]["last"]["total"] == 3
    assert runs(data) == ["first", "middle", "middle", "last"]


def test_kill_9_mid_job_is_interrupted_then_resumed(jobs_child: Child, jobs_env: dict[str, str]) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "hold").touch()
    child = jobs_child("run", "gated")
    wait_for(lambda: (data / "middle-started").exists(), what="the middle step")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    job_id = only_job(data)
    with Journal.open(data) as journal:
        job = journal.get_job(job_id)
        assert job.state == JobState.INTERRUPTED
        assert [s.state for s in journal.steps(job_id)] == [
            JobState.SUCCEEDED,
            JobState.INTERRUPTED,
            JobState.QUEUED,
        ]
    (data / "hold").unlink()
    resumed = jobs_child("resume", job_id)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert json.loads(out)["state"] == "succeeded"
    assert runs(data) == ["first", "middle", "middle", "last"]


def test_cancel_from_another_process_stops_the_running_step(
    jobs_child: Child, jobs_env: dict[str, str]
) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "hold").touch()
    child = jobs_child("run", "gated")
    wait_for(lambda: (data / "middle-started").exists(), what="the middle step")
    job_id = only_job(data)
    with Journal.open(data) as journal:
        journal.request_cancel(job_id)
        asked = time.monotonic()
    out, err = child.communicate(timeout=30)
    assert time.monotonic() - asked < 3
    assert child.returncode == 130, err
    assert json.loads(out)["state"] == "cancelled"
    with Journal.open(data) as journal:
        assert journal.get_job(job_id).state == JobState.CANCELLED
        assert [s.state for s in journal.steps(job_id)] == [
            JobState.SUCCEEDED,
            JobState.CANCELLED,
            JobState.CANCELLED,
        ]
    assert "last" not in runs(data)


def test_gui_jobs_take_turns_and_a_killed_holder_releases_the_desktop(
    jobs_child: Child, jobs_env: dict[str, str]
) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "hold").touch()
    holder = jobs_child("run", "desktop")
    wait_for(lambda: (data / "middle-started").exists(), what="the first GUI job")
    (data / "middle-started").unlink()
    waiter = jobs_child("run", "desktop")
    with Journal.open(data, recover=False) as journal:
        wait_for(lambda: len(journal.list_jobs()) == 2, what="the second job")
        time.sleep(0.5)
        second = journal.list_jobs()[0]
        assert second.state == JobState.QUEUED and not (data / "middle-started").exists()
        os.kill(holder.pid, signal.SIGKILL)
        wait_for(lambda: (data / "middle-started").exists(), what="the second GUI job to get the desktop")
        (data / "hold").unlink()
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert journal.get_job(second.job_id).state == JobState.SUCCEEDED


class Count(BaseModel):
    n: int = 0


def test_retries_backoff_and_timeouts(jobs_config: Config) -> None:
    calls: list[int] = []

    def flaky(inp: Count, ctx: StepContext) -> Count:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectError("VM not reachable yet")
        return Count(n=ctx.attempt)

    def slow(inp: Count, ctx: StepContext) -> Count:
        while not ctx.cancelled():
            time.sleep(0.01)
        return Count()

    wf = Workflow(
        name="retry-test",
        input=Count,
        steps=(
            Step("flaky", flaky, Count, retries=2, backoff_seconds=0.01),
            Step(
                "slow", slow, Count, parents=("flaky",), retries=1, backoff_seconds=0.01, timeout_seconds=0.2
            ),
            Step("after", flaky, Count, parents=("slow",)),
            Step("independent", lambda i, c: Count(n=7), Count),
        ),
    )
    engine = LocalEngine(jobs_config)
    started = time.monotonic()
    outcome = engine.run(wf, Count())
    assert time.monotonic() - started < 5
    assert calls == [1, 2, 3] and outcome.outputs["flaky"] == Count(n=3)
    assert outcome.state == JobState.FAILED and outcome.exit_code == 124
    assert outcome.error == "step slow: step slow passed its timeout of 0.2s"
    steps = {s.name: s for s in engine.journal.steps(outcome.job_id)}
    assert (steps["slow"].state, steps["slow"].attempts) == (JobState.FAILED, 2)
    assert steps["after"].state == JobState.SKIPPED
    assert steps["independent"].state == JobState.SUCCEEDED
    retrying = [e for e in engine.journal.events(outcome.job_id) if e.state == "retrying"]
    assert [(e.step, e.attempt) for e in retrying] == [("flaky", 1), ("flaky", 2), ("slow", 1)]


def test_a_step_times_out_on_time_while_another_process_holds_the_journal(jobs_config: Config) -> None:
    """The monitor waits on a locked journal (its heartbeat, up to the 10 s busy timeout); the
    step's deadline must not wait with it."""

    journal = jobs_config.data.dir / JOURNAL_FILE
    waited: list[float] = []

    def held_while_running(inp: Count, ctx: StepContext) -> Count:
        with JournalLock(journal):
            started = time.monotonic()
            while not ctx.cancelled() and time.monotonic() - started < 30:
                time.sleep(0.01)
            waited.append(time.monotonic() - started)
        return Count()

    # past the monitor's first heartbeat (2 s), which waits for the lock
    wf = Workflow(
        name="locked", input=Count, steps=(Step("held", held_while_running, Count, timeout_seconds=3),)
    )
    outcome = LocalEngine(jobs_config).run(wf, Count())
    assert outcome.exit_code == 124, outcome.error
    assert waited and waited[0] < 5.5, waited  # was ~12 s: the heartbeat's 10 s wait, then the check


def test_secrets_never_reach_the_journal(jobs_config: Config) -> None:
    from win_automation import log

    log.register_secret("hunter2-secret")

    def leaky(inp: Count, ctx: StepContext) -> Count:
        raise UsageError("login with hunter2-secret refused")

    wf = Workflow(name="leaky", input=Count, steps=(Step("leak", leaky, Count),))
    engine = LocalEngine(jobs_config)
    outcome = engine.run(wf, Count())
    assert outcome.state == JobState.FAILED and outcome.exit_code == 2
    job = engine.journal.get_job(outcome.job_id)
    recorded = [job.error, *(s.error for s in engine.journal.steps(outcome.job_id))]
    recorded += [e.message for e in engine.journal.events(outcome.job_id)]
    assert "step leak: login with *** refused" in recorded
    assert not any("hunter2" in (text or "") for text in recorded)


def test_an_engine_failure_is_recorded_not_left_queued(jobs_config: Config) -> None:
    jobs_config.data.dir.mkdir(parents=True, exist_ok=True)
    (jobs_config.data.dir / "locks").write_text("a file where the lock folder should be")
    wf = Workflow(name="gui-test", input=Count, gui=True, steps=(Step("one", lambda i, c: Count(), Count),))
    engine = LocalEngine(jobs_config)
    with pytest.raises(StorageError, match="it exists and is not a folder"):  # exit 74, one line
        engine.run(wf, Count())
    (job,) = engine.journal.list_jobs()
    assert job.state == JobState.INTERRUPTED and (job.error or "").startswith("engine: the desktop lock ")
    assert engine.journal.steps(job.job_id)[0].state == JobState.INTERRUPTED  # resumable, as the job


def test_a_step_skipped_by_its_own_check_counts_as_finished_on_resume(jobs_config: Config) -> None:
    from win_automation.errors import CommandFailed, Skipped

    calls: list[str] = []
    failing = [True]

    def check(inp: Count, ctx: StepContext) -> Count:
        calls.append("check")
        raise Skipped("already done", result=Count(n=5))

    def then(inp: Count, ctx: StepContext) -> Count:
        calls.append("then")
        if failing[0]:
            raise CommandFailed("not yet")
        return Count(n=ctx.parent("check", Count).n + 1)

    wf = Workflow(
        name="skip-test",
        input=Count,
        steps=(Step("check", check, Count), Step("then", then, Count, parents=("check",))),
    )
    engine = LocalEngine(jobs_config)
    first = engine.run(wf, Count())
    assert first.state == JobState.FAILED
    assert [s.state for s in engine.journal.steps(first.job_id)] == [JobState.SKIPPED, JobState.FAILED]
    failing[0] = False
    again = engine.resume(first.job_id, wf)
    assert again.state == JobState.SKIPPED and again.exit_code == 0
    assert again.outputs["then"] == Count(n=6) and calls == ["check", "then", "then"]


def test_closing_the_engine_ends_its_monitor_thread(jobs_config: Config) -> None:
    import threading

    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        engine = LocalEngine(jobs_config)
        engine.run(all_workflows()["ping"], all_workflows()["ping"].parse_input(None))
        engine.close()
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []


def test_a_job_waiting_for_the_desktop_can_be_cancelled(jobs_child: Child, jobs_env: dict[str, str]) -> None:
    data = Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])
    data.mkdir(parents=True)
    (data / "hold").touch()
    holder = jobs_child("run", "desktop")
    wait_for(lambda: (data / "middle-started").exists(), what="the first GUI job")
    waiter = jobs_child("run", "desktop")
    with Journal.open(data, recover=False) as journal:
        wait_for(lambda: len(journal.list_jobs()) == 2, what="the second job")
        second = journal.list_jobs()[0]
        journal.request_cancel(second.job_id)
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 130, err
        assert json.loads(out)["state"] == "cancelled"
        assert journal.get_job(second.job_id).state == JobState.CANCELLED
        assert journal.steps(second.job_id)[0].state == JobState.CANCELLED
        assert holder.poll() is None  # the desktop's holder goes on


def _journal_fds(config: Config) -> int:
    """How many of this process's file descriptors are open on the journal of `config`."""
    journal = str(config.data.dir / "journal.sqlite3")
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == journal
        except FileNotFoundError:  # closed meanwhile
            continue
    return count


def test_a_job_commits_once_per_state_change_and_rereads_nothing(jobs_config: Config) -> None:
    """A two-step job: one commit for each recorded change (created, running, each step's start
    and end, the last step's end together with the job's), the same events as ever, and no read of
    what this process has just written; a job shorter than the monitor's poll opens no second
    connection (the monitor opens its own at its first poll)."""
    fds: list[int] = []

    def one(inp: Count, ctx: StepContext) -> Count:
        time.sleep(0.2)  # time enough for a monitor to open its connection, were it to at once
        fds.append(_journal_fds(jobs_config))
        return Count(n=1)

    wf = Workflow(
        name="commits",
        input=Count,
        steps=(Step("one", one, Count), Step("two", lambda i, c: Count(n=2), Count, parents=("one",))),
    )
    engine = LocalEngine(jobs_config, poll=30.0)
    statements: list[str] = []
    engine.journal._conn.set_trace_callback(statements.append)
    outcome = engine.run(wf, Count())
    engine.journal._conn.set_trace_callback(None)
    engine.close()
    assert outcome.state == JobState.SUCCEEDED and outcome.outputs["two"] == Count(n=2)
    assert fds == [1]
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 6
    rereads = [s for s in statements if s.startswith(("SELECT * FROM jobs", "SELECT state FROM steps"))]
    assert len(rereads) == 1  # the outcome, read once the job has ended
    with Journal.open(jobs_config.data.dir) as journal:
        trail = [(e.step, e.state, e.attempt) for e in journal.events(outcome.job_id)]
        job = journal.get_job(outcome.job_id)
        steps = journal.steps(outcome.job_id)
    assert trail == [
        (None, "queued", None),
        (None, "running", None),
        ("one", "running", 1),
        ("one", "succeeded", 1),
        ("two", "running", 1),
        ("two", "succeeded", 1),
        (None, "succeeded", None),
    ]
    assert job.started_at is not None and job.finished_at == steps[1].finished_at


def test_the_monitor_opens_its_connection_at_its_first_poll_and_heartbeats(jobs_config: Config) -> None:
    """A step longer than the poll: the monitor has its own connection by then, and refreshes the
    job's heartbeat through it."""
    from win_automation.engines.monitor import JobMonitor

    seen: list[int] = []

    def slow(inp: Count, ctx: StepContext) -> Count:
        time.sleep(0.4)
        seen.append(_journal_fds(jobs_config))
        return Count()

    engine = LocalEngine(jobs_config, poll=0.05)
    outcome = engine.run(Workflow(name="slow", input=Count, steps=(Step("s", slow, Count),)), Count())
    engine.close()
    assert outcome.state == JobState.SUCCEEDED and seen == [2]
    with Journal.open(jobs_config.data.dir) as journal:
        job = journal.create_job("ping", "{}", steps=["a"])
        journal._conn.execute("UPDATE jobs SET heartbeat_at = 0 WHERE job_id = ?", (job.job_id,))
        monitor = JobMonitor(jobs_config.data.dir, poll=0.02, heartbeat=0.05)
        monitor.watch(job.job_id, job.epoch)
        wait_for(lambda: (journal.get_job(job.job_id).heartbeat_at or 0) > time.time() - 5, timeout=5)
        monitor.stop()
    assert _journal_fds(jobs_config) == 0


def test_a_step_end_the_locked_journal_refused_ends_the_job_and_runs_nothing_after_it(
    jobs_config: Config,
) -> None:
    """A journal locked past its busy timeout when a step's end is recorded is the engine's
    failure, not the step's: its dependents do not run once the lock is gone (the step's failure
    was never recorded, so nothing said to skip them), and the job's end is not tried again (one
    more busy timeout for nothing): the job is the next open's to mark interrupted once its
    owner (the CLI process, which exits 74) is gone."""
    import threading

    from win_automation.errors import CommandFailed, JournalBusy

    path = jobs_config.data.dir / JOURNAL_FILE
    ran: list[str] = []

    def fails_under_a_lock(inp: Count, ctx: StepContext) -> Count:
        lock = JournalLock(path)
        # released after the step's end gave up (1 s), before its next write did
        threading.Timer(1.6, lock.release).start()
        locks.append(lock)
        raise CommandFailed("the step failed")

    locks: list[JournalLock] = []
    wf = Workflow(
        name="locked-end",
        input=Count,
        steps=(
            Step("first", fails_under_a_lock, Count),
            Step("second", lambda i, c: ran.append("second") or Count(), Count, parents=("first",)),
        ),
    )
    engine = LocalEngine(jobs_config, journal=Journal.open(jobs_config.data.dir, busy_timeout=1.0))
    try:
        started = time.monotonic()
        with pytest.raises(JournalBusy):
            engine.run(wf, Count())
        assert time.monotonic() - started < 1.6  # one busy timeout (1 s), not one more
        wait_for(lambda: all(lock.proc.poll() is not None for lock in locks), 30)
    finally:
        engine.close()
        for lock in locks:
            lock.release()
    assert ran == []
    with Journal.open(jobs_config.data.dir) as journal:
        (job,) = journal.list_jobs()
        assert job.state == JobState.RUNNING  # its owner, this process, lives on
        # the CLI process exited: its pid now names no process, or another one (another start time)
        journal._conn.execute("UPDATE jobs SET owner_start = ? WHERE job_id = ?", ("0", job.job_id))
    with Journal.open(jobs_config.data.dir) as journal:
        assert journal.get_job(job.job_id).state == JobState.INTERRUPTED
