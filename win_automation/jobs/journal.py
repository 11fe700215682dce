"""The job journal: one SQLite file (`<data.dir>/journal.sqlite3`) that records every job, every
step's result and every state change, shared by all CLI processes and both engines.

Recording API (used by the local engine and by the Hatchet worker alike):

    journal = Journal.open(config.data.dir)        # also marks dead owners' jobs interrupted
    job = journal.create_job("ssh-exec", input_json, steps=["run", "collect"],
                             engine="hatchet", external_id=run_id)   # state queued, owned by this pid
    journal.set_job_state(job.job_id, JobState.RUNNING)
    journal.step_started(job.job_id, "run", attempt=1)
    journal.step_finished(job.job_id, "run", JobState.SUCCEEDED, output_json=out.model_dump_json())
    journal.step_finished(job.job_id, "collect", JobState.FAILED, error="...", error_code=3)
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

A job in `queued` or `running` has an owner: a pid (with its start time, so a reused pid is not
mistaken for the owner) on a host, and a heartbeat. `Journal.open` marks `interrupted` every such
local-engine job whose owner is dead or whose heartbeat is older than HEARTBEAT_EXPIRY: no job
stays "running" forever. Jobs of another engine (`engine='hatchet'`) are left to that engine: the
run goes on without the process that triggered it, so its record is brought up to date from the
engine (the Hatchet layer's sync), not from the owner pid.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from win_automation.errors import NotFoundError, StorageError, Superseded
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.jobs.owners import process_alive, process_start
from win_automation.jobs.records import (
    EventRecord,
    JobRecord,
    StepRecord,
    event_from_row,
    job_from_row,
    step_from_row,
)
from win_automation.jobs.schema import MIGRATIONS
from win_automation.jobs.state import ACTIVE, JobState, check_transition

JOURNAL_FILE = "journal.sqlite3"
BUSY_TIMEOUT_SECONDS = 10.0
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_EXPIRY = 30.0
PARENT_FAILED = "a parent step failed"


@contextmanager
def storage_faults(path: Path) -> Iterator[None]:
    """SQLite's errors about the file itself (corrupt, read-only, cannot be opened) as one-line
    StorageErrors that say where the journal is and what to do; constraint errors pass through."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in reason:
            raise StorageError(f"the journal {path} is busy ({reason}); try again") from None
        if not isinstance(exc, sqlite3.OperationalError) or "malformed" in reason:
            raise StorageError(
                f"the journal {path} is corrupt ({reason}): move it aside (mv {path} {path}.corrupt)"
                " and the next command starts a new, empty journal; the artifact folders are intact"
            ) from None
        raise StorageError(
            f"the journal {path} cannot be used ({reason}): data.dir {path.parent} must be a"
            " writable folder (or point data.dir, WIN_AUTOMATION_DATA_DIR, elsewhere)"
        ) from None


# A finished step: succeeded, or skipped by errors.Skipped (which records the step's output).
_FINISHED = "(state = 'succeeded' OR (state = 'skipped' AND output_json IS NOT NULL))"


class Journal:
    """A connection to the journal; one per thread (the engine's heartbeat opens its own)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()  # one transaction at a time when threads share a Journal
        self._conn.row_factory = sqlite3.Row
        self._pid = os.getpid()
        self._start = process_start(self._pid)
        self._host = socket.gethostname()

    @classmethod
    def open(cls, data_dir: Path, *, recover: bool = True) -> Journal:
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            reason = "it is a file" if isinstance(exc, FileExistsError) else exc.strerror
            raise StorageError(
                f"data.dir {data_dir}: cannot create it ({reason}); point data.dir"
                " (WIN_AUTOMATION_DATA_DIR) at a writable folder"
            ) from None
        path = data_dir / JOURNAL_FILE
        with storage_faults(path):
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                journal = cls(path, conn)
                journal._migrate()
                if recover:
                    journal.recover_interrupted()
            except BaseException:
                conn.close()
                raise
        return journal

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, fence: tuple[str, int | None] | None = None) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction. `fence` (job id, epoch held by the caller): the
        write happens only while the job's epoch is still that one, else Superseded."""
        with self._lock, storage_faults(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if fence is not None and fence[1] is not None:
                    job_id, epoch = fence
                    row = self._conn.execute("SELECT epoch FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                    if row is not None and row[0] != epoch:
                        raise Superseded(
                            f"job {job_id} was taken over by another process (owner epoch {row[0]},"
                            f" this process held {epoch}); this process records nothing more"
                        )
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock, storage_faults(self.path):
            return self._conn.execute(sql, args).fetchall()

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version >= len(MIGRATIONS):
            return
        with self._write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # -- recording -------------------------------------------------------------------------

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
            conn.execute(
                "INSERT INTO jobs (job_id, trace_id, workflow, engine, external_id, state, input_json,"
                " created_at, updated_at, owner_pid, owner_start, owner_host, heartbeat_at, artifacts_dir)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
            )
            conn.executemany(
                "INSERT INTO steps (job_id, name, position, state) VALUES (?,?,?,?)",
                [(job_id, name, i, JobState.QUEUED) for i, name in enumerate(steps)],
            )
            self._event(conn, job_id, None, JobState.QUEUED, None, None, now)
        return self.get_job(job_id)

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

    def heartbeat(self, jobs: dict[str, int | None]) -> None:
        """Refresh the heartbeat of each job id whose epoch is still the one given (None: any)."""
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE jobs SET heartbeat_at = ? WHERE job_id = ? AND (? IS NULL OR epoch = ?)",
                [(now, job_id, epoch, epoch) for job_id, epoch in jobs.items()],
            )

    def control(self, job_id: str) -> tuple[bool, int]:
        """(cancel requested, current owner epoch): what a running owner polls."""
        rows = self._query("SELECT cancel_requested, epoch FROM jobs WHERE job_id = ?", (job_id,))
        return (bool(rows[0][0]), int(rows[0][1])) if rows else (False, 0)

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
            current = self._step_state(conn, job_id, step)
            if current not in ACTIVE:
                return False
            if current == JobState.QUEUED and state in (JobState.SUCCEEDED, JobState.FAILED):
                conn.execute(
                    "UPDATE steps SET state = 'running', attempts = 1, started_at = ?"
                    " WHERE job_id = ? AND name = ?",
                    (now, job_id, step),
                )
                self._event(conn, job_id, step, JobState.RUNNING, 1, None, now)
                current = JobState.RUNNING
            check_transition(current, state, what=f"step {step} of job {job_id}")
            conn.execute(
                "UPDATE steps SET state = ?, output_json = ?, error = ?, error_code = ?, finished_at = ?"
                " WHERE job_id = ? AND name = ?",
                (state, output_json, error, error_code, now, job_id, step),
            )
            (attempts,) = conn.execute(
                "SELECT attempts FROM steps WHERE job_id = ? AND name = ?", (job_id, step)
            ).fetchone()
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

    def request_cancel(self, job_id: str) -> JobRecord:
        """Ask the owner of an active job to stop; an interrupted job is cancelled at once."""
        now = time.time()
        with self._write() as conn:
            current = self._job_state(conn, job_id)
            if current == JobState.INTERRUPTED:
                conn.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ? WHERE job_id = ?",
                    (JobState.CANCELLED, now, now, job_id),
                )
                self._event(conn, job_id, None, JobState.CANCELLED, None, "cancelled by request", now)
            elif current in ACTIVE:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))
                self._event(conn, job_id, None, "cancel-requested", None, None, now)
        return self.get_job(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE job_id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def recover_interrupted(self) -> list[str]:
        """Mark interrupted every active local job whose owner died or whose heartbeat expired.
        Hatchet jobs are left alone: the engine owns them (it reassigns a dead worker's tasks)."""
        now = time.time()
        rows = self._query(
            "SELECT job_id, owner_pid, owner_start, owner_host, heartbeat_at FROM jobs"
            " WHERE state IN ('queued', 'running') AND engine = 'local'"
        )
        dead = []
        for row in rows:
            expired = row["heartbeat_at"] is None or now - row["heartbeat_at"] > HEARTBEAT_EXPIRY
            local = row["owner_host"] == self._host and row["owner_pid"] is not None
            if expired or (local and not process_alive(row["owner_pid"], row["owner_start"])):
                dead.append(row["job_id"])
        interrupted = []
        for job_id in dead:
            with self._write() as conn:
                state = self._job_state(conn, job_id)
                if state not in ACTIVE:
                    continue  # its owner finished it meanwhile
                message = "owner process died or stopped heart-beating"
                conn.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ?, error = ?, epoch = epoch + 1"
                    " WHERE job_id = ?",
                    (JobState.INTERRUPTED, now, now, message, job_id),
                )
                conn.execute(
                    "UPDATE steps SET state = ?, finished_at = ? WHERE job_id = ? AND state = 'running'",
                    (JobState.INTERRUPTED, now, job_id),
                )
                self._event(conn, job_id, None, JobState.INTERRUPTED, None, message, now)
                interrupted.append(job_id)
        return interrupted

    # -- reading ---------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"job {job_id} not found in the journal {self.path}")
        return job_from_row(rows[0])

    def find_external(self, engine: str, external_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE engine = ? AND external_id = ?", (engine, external_id))
        return job_from_row(rows[0]) if rows else None

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        workflow: str | None = None,
        since: float | None = None,
        limit: int | None = 50,
    ) -> list[JobRecord]:
        """Newest first."""
        where, args = [], []
        for clause, value in (("state = ?", state), ("workflow = ?", workflow), ("created_at >= ?", since)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, job_id DESC"
        if limit is not None and limit < 2**63:  # SQLite's integers are 64-bit: more is no limit
            sql += f" LIMIT {int(limit)}"
        return [job_from_row(row) for row in self._query(sql, args)]

    def step_state(self, job_id: str, step: str) -> JobState:
        with self._lock:
            return self._step_state(self._conn, job_id, step)

    def steps(self, job_id: str) -> list[StepRecord]:
        rows = self._query("SELECT * FROM steps WHERE job_id = ? ORDER BY position", (job_id,))
        return [step_from_row(row) for row in rows]

    def events(self, job_id: str) -> list[EventRecord]:
        rows = self._query("SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [event_from_row(row) for row in rows]

    def active_job_ids(self) -> set[str]:
        rows = self._query("SELECT job_id FROM jobs WHERE state IN ('queued', 'running')")
        return {row[0] for row in rows}

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _job_state(conn: sqlite3.Connection, job_id: str) -> JobState:
        row = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} not found in the journal")
        return JobState(row[0])

    @staticmethod
    def _step_state(conn: sqlite3.Connection, job_id: str, step: str) -> JobState:
        row = conn.execute("SELECT state FROM steps WHERE job_id = ? AND name = ?", (job_id, step)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} has no step {step}")
        return JobState(row[0])

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: str,
        step: str | None,
        state: str,
        attempt: int | None,
        message: str | None,
        ts: float,
    ) -> None:
        conn.execute(
            "INSERT INTO events (job_id, step, state, attempt, message, ts) VALUES (?,?,?,?,?,?)",
            (job_id, step, str(state), attempt, message, ts),
        )
