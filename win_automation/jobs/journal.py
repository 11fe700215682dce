"""The job journal: one SQLite file (`<data.dir>/journal.sqlite3`) that records every job, every
step's result and every state change, shared by all CLI processes and both engines.

Recording API (used by the local engine and by the Hatchet worker alike):

    journal = Journal.open(config.data.dir)        # also marks dead owners' jobs interrupted
    job = journal.create_job("ssh-exec", input_json, steps=["run", "collect"],
                             engine="hatchet", external_id=run_id)   # state queued, owned by this pid
    journal.start_job(job.job_id)                  # queued -> running (no-op once it has left queued)
    journal.step_started(job.job_id, "run", attempt=1)
    journal.step_finished(job.job_id, "run", JobState.SUCCEEDED, output_json=out.model_dump_json())
    journal.step_ended(job.job_id, "collect", JobState.FAILED, error="...", error_code=3)
                           # step_finished and, in the same transaction, end_job once every step ended
    journal.set_job_state(job.job_id, JobState.FAILED, error="...", error_code=3)
    journal.heartbeat(job.job_id)                  # every HEARTBEAT_INTERVAL while it runs

Every state change is checked against `jobstate` (illegal ones raise IllegalTransition, inside
the same transaction, so two processes racing for a job cannot both win) and appended to the
`events` table. `request_cancel` sets a flag that the owner polls (`cancel_requested`).

Concurrency and durability: WAL mode, so readers never block the writer; `BEGIN IMMEDIATE` short
transactions with a 10 s busy timeout; `synchronous=NORMAL`, which in WAL mode survives any crash
of the process (kill -9) and loses at most the last commits on power loss, at a fraction of the
cost of an fsync per commit (benchmarks/jobs_bench.py). Migrations are versioned with
`PRAGMA user_version` and applied in one exclusive transaction, so they are idempotent and safe
when several processes open a new journal at once.

Opening the journal and who owns a job (heartbeats, recovery, cancel requests):
win_automation.jobs.ownership.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.jobs.ownership import JournalOwnership
from win_automation.jobs.records import JobRecord, job_from_row
from win_automation.jobs.state import ACTIVE, JobState, check_transition

PARENT_FAILED = "a parent step failed"
PRUNE_BATCH = 2000
# ended for good: an interrupted job waits for `jobs resume` (or a person) and is kept
PRUNABLE = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.SKIPPED)


# A finished step: succeeded, or skipped by errors.Skipped (which records the step's output).
_FINISHED = "(state = 'succeeded' OR (state = 'skipped' AND output_json IS NOT NULL))"


class Journal(JournalOwnership):
    """The journal: a connection (jobs.connection), opened with its owners (jobs.ownership), and
    every recorded change; one per thread."""

    def create_job(
        self,
        workflow: str,
        input_json: str,
        *,
        steps: Sequence[str],
        engine: str = "local",
        external_id: str | None = None,
        job_id: str | None = None,
        trace_id: str | None = None,
        artifacts_root: Path | None = None,
    ) -> JobRecord:
        """Record a new job, owned by this process, in state queued with its steps queued.
        `artifacts_root` (artifacts.out_dir) records the job's folder `<root>/<job_id>`, absolute."""
        job_id = job_id or new_job_id()
        folder = None if artifacts_root is None else str(Path(os.path.abspath(artifacts_root)) / job_id)
        now = time.time()
        with self._write() as conn:
            (row,) = conn.execute(  # all fetched: the statement is done before the next one
                "INSERT INTO jobs (job_id, trace_id, workflow, engine, external_id, state, input_json,"
                " created_at, updated_at, owner_pid, owner_start, owner_host, heartbeat_at, artifacts_dir)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *",
                (
                    job_id,
                    trace_id or new_trace_id(),
                    workflow,
                    engine,
                    external_id,
                    JobState.QUEUED,
                    input_json,
                    now,
                    now,
                    self._pid,
                    self._start,
                    self._host,
                    now,
                    folder,
                ),
            ).fetchall()
            conn.executemany(
                "INSERT INTO steps (job_id, name, position, state) VALUES (?,?,?,?)",
                [(job_id, name, i, JobState.QUEUED) for i, name in enumerate(steps)],
            )
            self._event(conn, job_id, None, JobState.QUEUED, None, None, now)
        return job_from_row(row)  # the row as inserted, defaults included: no second read

    def set_job_state(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        error_code: int | None = None,
        epoch: int | None = None,
    ) -> None:
        """Move the job to `state` (checked), stamping start/finish times and the error."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            current = self._job_state(conn, job_id)
            check_transition(current, state, what=f"job {job_id}")
            sets = ["state = ?", "updated_at = ?", "error = ?", "error_code = ?"]
            args: list[Any] = [state, now, error, error_code]
            if state == JobState.RUNNING:
                sets.append("started_at = COALESCE(started_at, ?)")
                args.append(now)
            if state not in ACTIVE:
                sets.append("finished_at = ?")
                args.append(now)
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*args, job_id))
            self._event(conn, job_id, None, state, None, error, now)

    def start_job(self, job_id: str, *, epoch: int | None = None) -> bool:
        """queued -> running (what `set_job_state(RUNNING)` records), in one transaction that
        reads the state it changes; False, nothing written, when the job has left `queued`."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            if self._job_state(conn, job_id) != JobState.QUEUED:
                return False
            conn.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, error = NULL, error_code = NULL,"
                " started_at = COALESCE(started_at, ?) WHERE job_id = ?",
                (JobState.RUNNING, now, now, job_id),
            )
            self._event(conn, job_id, None, JobState.RUNNING, None, None, now)
        return True

    def requeue(self, job_id: str) -> JobRecord:
        """Resume: a failed or interrupted job and its unfinished steps go back to queued, owned
        by this process; finished steps (succeeded, or skipped with an output) keep their
        outputs. One transaction: of two processes resuming one job, one gets IllegalTransition."""
        now = time.time()
        with self._write() as conn:
            current = self._job_state(conn, job_id)
            check_transition(current, JobState.QUEUED, what=f"job {job_id}")
            for name, state in conn.execute(
                f"SELECT name, state FROM steps WHERE job_id = ? AND state != 'queued' AND NOT {_FINISHED}",
                (job_id,),
            ).fetchall():
                check_transition(JobState(state), JobState.QUEUED, what=f"step {name} of job {job_id}")
            conn.execute(
                "UPDATE steps SET state = 'queued', started_at = NULL, finished_at = NULL, attempts = 0"
                f" WHERE job_id = ? AND NOT {_FINISHED}",
                (job_id,),
            )
            conn.execute(
                "UPDATE jobs SET state = 'queued', error = NULL, error_code = NULL, finished_at = NULL,"
                " cancel_requested = 0, updated_at = ?, owner_pid = ?, owner_start = ?, owner_host = ?,"
                " heartbeat_at = ?, epoch = epoch + 1 WHERE job_id = ?",
                (now, self._pid, self._start, self._host, now, job_id),
            )
            self._event(conn, job_id, None, JobState.QUEUED, None, f"resumed from {current.value}", now)
        return self.get_job(job_id)

    def set_external_id(self, job_id: str, external_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE jobs SET external_id = ? WHERE job_id = ?", (external_id, job_id))

    def step_started(self, job_id: str, step: str, *, attempt: int, epoch: int | None = None) -> None:
        """An attempt of `step` begins (attempt 1, or a retry: running -> running)."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            current = self._step_state(conn, job_id, step)
            check_transition(current, JobState.RUNNING, what=f"step {step} of job {job_id}")
            conn.execute(
                "UPDATE steps SET state = ?, attempts = ?, error = NULL, error_code = NULL,"
                " started_at = COALESCE(started_at, ?), finished_at = NULL WHERE job_id = ? AND name = ?",
                (JobState.RUNNING, attempt, now, job_id, step),
            )
            self._event(conn, job_id, step, JobState.RUNNING, attempt, None, now)

    def step_attempt_failed(
        self, job_id: str, step: str, *, attempt: int, error: str, epoch: int | None = None
    ) -> None:
        """One attempt failed and will be retried: an event, the step stays running."""
        with self._write((job_id, epoch)) as conn:
            conn.execute("UPDATE steps SET error = ? WHERE job_id = ? AND name = ?", (error, job_id, step))
            self._event(conn, job_id, step, "retrying", attempt, error, time.time())

    def step_finished(
        self,
        job_id: str,
        step: str,
        state: JobState,
        *,
        output_json: str | None = None,
        error: str | None = None,
        error_code: int | None = None,
        epoch: int | None = None,
        skip: Sequence[str] = (),
    ) -> bool:
        """The step ends in `state` (succeeded with its output, failed, skipped, cancelled...);
        each step in `skip` still queued is skipped ("a parent step failed"). A step that has
        already ended is left as it is (another process recorded it first): False. A queued step
        that ends is recorded as started first (the worker that ran it is on another host)."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            return self._finish_step(conn, job_id, step, state, output_json, error, error_code, skip, now)

    def step_ended(
        self,
        job_id: str,
        step: str,
        state: JobState,
        *,
        output_json: str | None = None,
        error: str | None = None,
        error_code: int | None = None,
        epoch: int | None = None,
        skip: Sequence[str] = (),
    ) -> JobState | None:
        """`step_finished`, then `end_job` without a state, in one transaction: the job ends with
        its last step (nothing happens between the two, so they commit together, and a crash
        cannot leave every step ended under a job still `running`). The state the job ended in,
        or None when it is not ending."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            self._finish_step(conn, job_id, step, state, output_json, error, error_code, skip, now)
            return self._end(conn, job_id, None, None, None, now)

    def _finish_step(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        step: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        error_code: int | None,
        skip: Sequence[str],
        now: float,
    ) -> bool:
        current, attempts = self._step_row(conn, job_id, step)
        if current not in ACTIVE:
            return False
        if current == JobState.QUEUED and state in (JobState.SUCCEEDED, JobState.FAILED):
            conn.execute(
                "UPDATE steps SET state = 'running', attempts = 1, started_at = ?"
                " WHERE job_id = ? AND name = ?",
                (now, job_id, step),
            )
            self._event(conn, job_id, step, JobState.RUNNING, 1, None, now)
            current, attempts = JobState.RUNNING, 1
        check_transition(current, state, what=f"step {step} of job {job_id}")
        conn.execute(
            "UPDATE steps SET state = ?, output_json = ?, error = ?, error_code = ?, finished_at = ?"
            " WHERE job_id = ? AND name = ?",
            (state, output_json, error, error_code, now, job_id, step),
        )
        self._event(conn, job_id, step, state, attempts or None, error, now)
        for name in skip:
            if self._step_state(conn, job_id, name) == JobState.QUEUED:
                conn.execute(
                    "UPDATE steps SET state = 'skipped', error = ?, finished_at = ?"
                    " WHERE job_id = ? AND name = ?",
                    (PARENT_FAILED, now, job_id, name),
                )
                self._event(conn, job_id, name, JobState.SKIPPED, None, PARENT_FAILED, now)
        return True

    def prune_ended(self, before: float, *, batch: int = PRUNE_BATCH) -> int:
        """Delete the records (job, steps, events) of jobs that ended (succeeded, failed,
        cancelled, skipped) before `before`; returns how many went. In transactions of `batch`
        jobs, so that a first prune of a large journal never holds its write lock for long."""
        ended = ", ".join(f"'{state}'" for state in PRUNABLE)
        pruned = 0
        while True:
            with self._write() as conn:
                query = (
                    "SELECT job_id FROM jobs WHERE created_at < ? AND finished_at < ?"
                    f" AND state IN ({ended}) LIMIT ?"
                )
                ids = [row[0] for row in conn.execute(query, (before, before, batch))]
                marks = ", ".join("?" * len(ids))
                for table in ("events", "steps", "jobs"):
                    conn.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", ids)
            pruned += len(ids)
            if len(ids) < batch:
                return pruned

    def end_job(
        self,
        job_id: str,
        state: JobState | None = None,
        *,
        error: str | None = None,
        error_code: int | None = None,
        epoch: int | None = None,
    ) -> JobState | None:
        """End an active job, in one transaction.

        With `state` (cancelled, interrupted, or failed when the engine itself broke): its
        unfinished steps end with it (queued ones `skipped` when it failed). Without: the job ends
        only once every step has, in the state its steps say: `failed` (with the first failed
        step's error) when one failed, else `skipped` when one had nothing to do, else
        `succeeded`. Returns the state the job ended in, or None when it is not ending (a step is
        unfinished, or the job had already ended: another process recorded it first)."""
        now = time.time()
        with self._write((job_id, epoch)) as conn:
            return self._end(conn, job_id, state, error, error_code, now)

    def _end(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        state: JobState | None,
        error: str | None,
        error_code: int | None,
        now: float,
    ) -> JobState | None:
        current = self._job_state(conn, job_id)
        if current not in ACTIVE:
            return None
        steps = conn.execute(
            "SELECT name, state, error, error_code, output_json FROM steps WHERE job_id = ?"
            " ORDER BY finished_at, position",
            (job_id,),
        ).fetchall()
        if state is None:
            states = {JobState(row["state"]) for row in steps}
            if states & ACTIVE:
                return None
            failed = [row for row in steps if row["state"] == JobState.FAILED]
            if failed:
                state = JobState.FAILED
                error = f"step {failed[0]['name']}: {failed[0]['error']}"
                error_code = failed[0]["error_code"] or 1
            elif any(r["state"] == JobState.SKIPPED and r["output_json"] is not None for r in steps):
                state = JobState.SKIPPED
            else:
                state = JobState.SUCCEEDED
        else:
            for row in steps:
                step_state = JobState(row["state"])
                if step_state in ACTIVE:
                    ended = state
                    if state == JobState.FAILED:
                        ended = JobState.SKIPPED if step_state == JobState.QUEUED else JobState.FAILED
                    note = error if step_state == JobState.RUNNING else None
                    conn.execute(
                        "UPDATE steps SET state = ?, finished_at = ?, error = COALESCE(?, error)"
                        " WHERE job_id = ? AND name = ?",
                        (ended, now, note, job_id, row["name"]),
                    )
                    self._event(conn, job_id, row["name"], ended, None, None, now)
        if current == JobState.QUEUED and state in (
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.SKIPPED,
        ):
            conn.execute(
                "UPDATE jobs SET started_at = COALESCE(started_at, ?) WHERE job_id = ?", (now, job_id)
            )
        else:
            check_transition(current, state, what=f"job {job_id}")
        conn.execute(
            "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ?, error = ?, error_code = ?"
            " WHERE job_id = ?",
            (state, now, now, error, error_code, job_id),
        )
        self._event(conn, job_id, None, state, None, error, now)
        return state
