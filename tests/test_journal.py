"""The SQLite journal on real files: recording, migrations, dead owners, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixture_jobs import JournalLock

from win_automation.errors import IllegalTransition, JournalBusy, NotFoundError, Superseded
from win_automation.jobs.journal import Journal
from win_automation.jobs.ownership import HEARTBEAT_EXPIRY
from win_automation.jobs.schema import MIGRATIONS
from win_automation.jobs.state import JobState
from win_automation.jobs.storage import JOURNAL_FILE


def test_records_a_job_its_steps_and_every_state_change(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        job = journal.create_job(
            "ping", '{"a": 1}', steps=["one", "two"], engine="hatchet", external_id="run-7"
        )
        assert job.state == JobState.QUEUED and job.engine == "hatchet"
        assert journal.find_external("hatchet", "run-7") == job
        journal.set_job_state(job.job_id, JobState.RUNNING)
        journal.step_started(job.job_id, "one", attempt=1)
        journal.step_attempt_failed(job.job_id, "one", attempt=1, error="flaky")
        journal.step_started(job.job_id, "one", attempt=2)
        journal.step_finished(job.job_id, "one", JobState.SUCCEEDED, output_json='{"x": 1}')
        journal.step_finished(job.job_id, "two", JobState.SKIPPED, error="parent")
        journal.set_job_state(job.job_id, JobState.FAILED, error="boom", error_code=3)
        done = journal.get_job(job.job_id)
        assert (done.state, done.error, done.error_code) == (JobState.FAILED, "boom", 3)
        assert done.started_at is not None and done.finished_at is not None
        steps = journal.steps(job.job_id)
        assert [(s.name, s.state, s.attempts) for s in steps] == [
            ("one", JobState.SUCCEEDED, 2),
            ("two", JobState.SKIPPED, 0),
        ]
        assert steps[0].output_json == '{"x": 1}'
        trail = [(e.step, e.state, e.attempt) for e in journal.events(job.job_id)]
        assert trail == [
            (None, "queued", None),
            (None, "running", None),
            ("one", "running", 1),
            ("one", "retrying", 1),
            ("one", "running", 2),
            ("one", "succeeded", 2),
            ("two", "skipped", None),
            (None, "failed", None),
        ]


def test_illegal_transitions_raise_and_change_nothing(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        job = journal.create_job("ping", "{}", steps=["one"])
        with pytest.raises(IllegalTransition, match="cannot go from queued to succeeded"):
            journal.set_job_state(job.job_id, JobState.SUCCEEDED)
        journal.set_job_state(job.job_id, JobState.RUNNING)
        journal.set_job_state(job.job_id, JobState.SUCCEEDED)
        with pytest.raises(IllegalTransition):
            journal.requeue(job.job_id)
        assert journal.get_job(job.job_id).state == JobState.SUCCEEDED
        assert [e.state for e in journal.events(job.job_id)] == ["queued", "running", "succeeded"]
        with pytest.raises(NotFoundError, match="not found"):
            journal.get_job("20261122T015916123Z-000000000000")


def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    with Journal.open(tmp_path) as again:
        assert again.schema_version == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "steps", "events"} <= tables


def test_a_dead_owner_or_a_remote_owners_expired_heartbeat_makes_the_job_interrupted(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from win_automation.jobs.journal import Journal; "
        "from win_automation.jobs.state import JobState as S; j = Journal.open(Path(sys.argv[1])); "
        "job = j.create_job('ping', '{}', steps=['a']); j.set_job_state(job.job_id, S.RUNNING); "
        "j.step_started(job.job_id, 'a', attempt=1); print(job.job_id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    dead_job = out.stdout.strip()
    with Journal.open(tmp_path, recover=False) as journal:
        alive = journal.create_job("ping", "{}", steps=["a"])  # owned by this live process
        silent = journal.create_job("ping", "{}", steps=["a"])  # ... which stopped heart-beating
        elsewhere = journal.create_job("ping", "{}", steps=["a"])
        elsewhere_fresh = journal.create_job("ping", "{}", steps=["a"])
        remote = journal.create_job("ping", "{}", steps=["a"], engine="hatchet", external_id="run-1")
        expired = time.time() - HEARTBEAT_EXPIRY - 1
        journal._conn.execute(
            "UPDATE jobs SET heartbeat_at = ? WHERE job_id IN (?, ?, ?)",
            (expired, silent.job_id, elsewhere.job_id, remote.job_id),
        )
        journal._conn.execute(  # owners on another host sharing the data dir: only their heartbeat tells
            "UPDATE jobs SET owner_host = 'another-host' WHERE job_id IN (?, ?)",
            (elsewhere.job_id, elsewhere_fresh.job_id),
        )
        assert journal.get_job(dead_job).state == JobState.RUNNING
    with Journal.open(tmp_path) as journal:
        assert journal.get_job(dead_job).state == JobState.INTERRUPTED
        assert journal.steps(dead_job)[0].state == JobState.INTERRUPTED
        assert journal.get_job(elsewhere.job_id).state == JobState.INTERRUPTED
        assert journal.get_job(elsewhere_fresh.job_id).state == JobState.QUEUED
        # a live owner of this host keeps its job, silent or not (stopped, a suspended machine)
        assert journal.get_job(silent.job_id).state == JobState.QUEUED
        assert journal.get_job(alive.job_id).state == JobState.QUEUED
        assert journal.get_job(remote.job_id).state == JobState.QUEUED  # Hatchet's to bring up to date
        assert "owner process died" in (journal.get_job(dead_job).error or "")
        # ... until `jobs resume` takes that one job over: the silent one, not the fresh one
        assert journal.recover_interrupted(take_over=silent.job_id) == [silent.job_id]
        assert journal.recover_interrupted(take_over=alive.job_id) == []
        assert journal.get_job(silent.job_id).epoch == silent.epoch + 1  # its old owner is fenced


def test_cancel_request_and_resume_requeue(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        job = journal.create_job("ping", "{}", steps=["a", "b"])
        journal.set_job_state(job.job_id, JobState.RUNNING)
        assert not journal.cancel_requested(job.job_id)
        assert journal.request_cancel(job.job_id).cancel_requested
        journal.step_started(job.job_id, "a", attempt=1)
        journal.step_finished(job.job_id, "a", JobState.SUCCEEDED, output_json="{}")
        journal.step_started(job.job_id, "b", attempt=1)
        journal.step_finished(job.job_id, "b", JobState.FAILED, error="x")
        journal.set_job_state(job.job_id, JobState.FAILED, error="x")
        again = journal.requeue(job.job_id)
        assert again.state == JobState.QUEUED and not again.cancel_requested and again.error is None
        assert [s.state for s in journal.steps(job.job_id)] == [JobState.SUCCEEDED, JobState.QUEUED]


def test_four_processes_write_500_jobs_and_none_is_lost(
    tmp_path: Path, jobs_child: Callable[..., subprocess.Popen[str]], jobs_env: dict[str, str]
) -> None:
    children = [jobs_child("journal-writer", "125") for _ in range(4)]
    for child in children:
        _, err = child.communicate(timeout=100)
        assert child.returncode == 0, err
    with Journal.open(Path(jobs_env["WIN_AUTOMATION_DATA_DIR"])) as journal:
        jobs = journal.list_jobs(limit=None)
        assert len(jobs) == 500 and len({j.job_id for j in jobs}) == 500
        assert {j.state for j in jobs} == {JobState.SUCCEEDED}
        assert len(journal.list_jobs(state=JobState.SUCCEEDED, workflow="gated", limit=10)) == 10
        assert journal.list_jobs(since=time.time() + 60) == []


def test_threads_may_share_one_journal(tmp_path: Path) -> None:
    import threading

    with Journal.open(tmp_path) as journal:

        def write() -> None:
            for _ in range(40):
                job = journal.create_job("ping", "{}", steps=["a"])
                journal.set_job_state(job.job_id, JobState.RUNNING)
                journal.list_jobs(limit=5)

        threads = [threading.Thread(target=write) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(journal.list_jobs(state=JobState.RUNNING, limit=None)) == 160


def test_a_new_job_is_returned_exactly_as_the_journal_reads_it_back(tmp_path: Path) -> None:
    """create_job returns the row as inserted (defaults included), not a second read."""
    with Journal.open(tmp_path) as journal:
        for root in (None, tmp_path / "art"):
            job = journal.create_job("ping", '{"a": 1}', steps=["one"], artifacts_root=root)
            assert job == journal.get_job(job.job_id)
            assert (job.state, job.epoch, job.cancel_requested, job.started_at) == (
                JobState.QUEUED,
                1,
                False,
                None,
            )
        assert job.artifacts_dir == str(tmp_path / "art" / job.job_id)


def test_start_job_moves_queued_to_running_once_and_is_fenced(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        job = journal.create_job("ping", "{}", steps=["one"])
        with pytest.raises(Superseded):
            journal.start_job(job.job_id, epoch=job.epoch + 1)
        assert journal.get_job(job.job_id).state == JobState.QUEUED
        assert journal.start_job(job.job_id, epoch=job.epoch) is True
        running = journal.get_job(job.job_id)
        assert running.state == JobState.RUNNING and running.started_at is not None
        assert journal.start_job(job.job_id, epoch=job.epoch) is False  # already running: nothing written
        assert [e.state for e in journal.events(job.job_id)] == ["queued", "running"]
        with pytest.raises(NotFoundError):
            journal.start_job("20261122T015916123Z-000000000000")


def test_step_ended_ends_the_job_with_its_last_step_in_the_same_commit(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        job = journal.create_job("ping", "{}", steps=["one", "two", "three"])
        journal.start_job(job.job_id)
        journal.step_started(job.job_id, "one", attempt=1)
        assert journal.step_ended(job.job_id, "one", JobState.SUCCEEDED, output_json="{}") is None
        assert journal.get_job(job.job_id).state == JobState.RUNNING  # two and three are still queued
        journal.step_started(job.job_id, "two", attempt=1)
        journal.step_attempt_failed(job.job_id, "two", attempt=1, error="flaky")
        journal.step_started(job.job_id, "two", attempt=2)
        commits: list[str] = []
        journal._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        ended = journal.step_ended(
            job.job_id, "two", JobState.FAILED, error="boom", error_code=4, skip=["three"]
        )
        journal._conn.set_trace_callback(None)
        assert ended == JobState.FAILED and commits == ["COMMIT"]
        done = journal.get_job(job.job_id)
        assert (done.state, done.error, done.error_code) == (JobState.FAILED, "step two: boom", 4)
        steps = journal.steps(job.job_id)
        assert [(s.name, s.state, s.attempts) for s in steps] == [
            ("one", JobState.SUCCEEDED, 1),
            ("two", JobState.FAILED, 2),
            ("three", JobState.SKIPPED, 0),
        ]
        assert done.finished_at == steps[1].finished_at == steps[2].finished_at
        trail = [(e.step, e.state, e.attempt) for e in journal.events(job.job_id)]
        assert trail == [
            (None, "queued", None),
            (None, "running", None),
            ("one", "running", 1),
            ("one", "succeeded", 1),
            ("two", "running", 1),
            ("two", "retrying", 1),
            ("two", "running", 2),
            ("two", "failed", 2),
            ("three", "skipped", None),
            (None, "failed", None),
        ]
        # ended already (another process recorded it first): left as it is
        assert journal.step_ended(job.job_id, "two", JobState.SUCCEEDED, output_json="{}") is None
        assert journal.get_job(job.job_id) == done and len(journal.events(job.job_id)) == len(trail)


def test_a_reader_of_a_locked_journal_with_a_dead_owners_job_reads_it_as_it_is(tmp_path: Path) -> None:
    """`jobs list` opens the journal to read; marking a dead owner's job interrupted needs the
    write lock, which another process held: it waited the busy timeout, then exited 74. WAL
    readers are not held by a writer: the journal is read as it is, with open's error to note."""
    with Journal.open(tmp_path, recover=False) as journal:
        job = journal.create_job("ping", "{}", steps=["a"])
        journal._conn.execute("UPDATE jobs SET owner_start = '0' WHERE job_id = ?", (job.job_id,))  # died
    with JournalLock(tmp_path / JOURNAL_FILE):
        journal, refused = Journal.open_to_read(tmp_path, busy_timeout=0.3)
        with journal:
            assert isinstance(refused, JournalBusy) and journal.read_only
            assert journal.get_job(job.job_id).state == JobState.QUEUED  # as it is
    journal, refused = Journal.open_to_read(tmp_path)
    with journal:
        assert refused is None and not journal.read_only
        assert journal.get_job(job.job_id).state == JobState.INTERRUPTED


def test_an_owner_pid_now_a_process_with_a_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    """A job's owner pid reused by a process whose name is not UTF-8 (any process may set its
    own): /proc/PID/stat was decoded whole, and every command that opened the journal failed with
    a UnicodeDecodeError traceback. The pid's start time tells it is not the owner."""
    renamed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes, time; ctypes.CDLL(None).prctl(15, b'wa\\xff\\xfe', 0, 0, 0); time.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while b"\xff" not in Path(f"/proc/{renamed.pid}/comm").read_bytes():
            assert time.monotonic() < deadline, "the process was not renamed"
            time.sleep(0.02)
        with Journal.open(tmp_path, recover=False) as journal:
            job = journal.create_job("ping", "{}", steps=["a"])
            journal._conn.execute(
                "UPDATE jobs SET owner_pid = ?, owner_start = '0' WHERE job_id = ?", (renamed.pid, job.job_id)
            )
        with Journal.open(tmp_path) as journal:
            assert journal.get_job(job.job_id).state == JobState.INTERRUPTED  # not this process
    finally:
        renamed.kill()
        renamed.wait()


def backdate(path: Path, job_id: str, seconds: float) -> None:
    """The job as if it had been created and ended `seconds` ago (time travel for retention)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE jobs SET created_at = created_at - ?, finished_at = finished_at - ? WHERE job_id = ?",
            (seconds, seconds, job_id),
        )
    conn.close()


def test_prune_ended_deletes_old_ended_jobs_with_their_steps_and_events_only(tmp_path: Path) -> None:
    day = 86400.0
    with Journal.open(tmp_path) as journal:
        jobs: dict[str, str] = {}
        for label in ("succeeded", "failed", "cancelled", "skipped", "interrupted", "running", "recent"):
            job = journal.create_job("ping", "{}", steps=["a", "b"])
            jobs[label] = job.job_id
            journal.start_job(job.job_id)
            if label not in ("running", "recent"):
                journal.set_job_state(job.job_id, JobState(label))
        journal.set_job_state(jobs["recent"], JobState.SUCCEEDED)
        for label, job_id in jobs.items():
            if label != "recent":
                backdate(journal.path, job_id, 40 * day)
        # in batches of 2: the four old jobs that ended go in two transactions (and a third finds none)
        assert journal.prune_ended(time.time() - 30 * day, batch=2) == 4
        left = {job.job_id for job in journal.list_jobs(limit=100)}
        assert left == {jobs["interrupted"], jobs["running"], jobs["recent"]}
        gone = [jobs[label] for label in ("succeeded", "failed", "cancelled", "skipped")]
        conn = sqlite3.connect(journal.path)
        for table in ("steps", "events"):
            marks = ",".join("?" * len(gone))
            assert conn.execute(
                f"SELECT count(*) FROM {table} WHERE job_id IN ({marks})", gone
            ).fetchone() == (0,)
            assert conn.execute(
                f"SELECT count(*) FROM {table} WHERE job_id = ?", (jobs["recent"],)
            ).fetchone()[0]
        conn.close()
        assert journal.prune_ended(time.time() - 30 * day) == 0


def test_the_storage_error_check_keeps_a_live_connections_locks(tmp_path: Path) -> None:
    """After any SQLite storage error (a disk full for a moment) the journal's files were opened
    and closed to see whether they could be written: that drops every POSIX lock this process
    holds on them, SQLite's included; the next process to close the journal then deleted the
    WAL under the live connection (a worker's), whose later writes were lost."""
    import subprocess
    import sys

    from win_automation.jobs import storage

    journal = Journal.open(tmp_path)
    path = tmp_path / "journal.sqlite3"
    assert storage._not_writable_error(path) is None  # what runs on a storage error
    other = "import sys; from pathlib import Path; from win_automation.jobs.journal import Journal;"
    subprocess.run(
        [sys.executable, "-c", f"{other} Journal.open(Path(sys.argv[1])).close()", str(tmp_path)], check=True
    )
    assert path.with_name("journal.sqlite3-wal").exists()  # still this process's
    job = journal.create_job("ping", "{}", steps=["check-engine"])
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{other} print(len(Journal.open(Path(sys.argv[1])).list_jobs()))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen.stdout.strip() == "1", (job, seen)
    journal.close()
