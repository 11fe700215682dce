"""The journal's SQLite connection: fenced `BEGIN IMMEDIATE` write transactions, reads,
migrations, and the row helpers that `Journal` (win_automation.jobs.journal) builds on; its
storage faults are win_automation.jobs.storage's to say.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from win_automation.errors import JournalError, NotFoundError, Superseded
from win_automation.jobs.owners import process_start
from win_automation.jobs.records import (
    EventRecord,
    JobRecord,
    StepRecord,
    event_from_row,
    job_from_row,
    step_from_row,
)
from win_automation.jobs.schema import MIGRATIONS
from win_automation.jobs.state import JobState
from win_automation.jobs.storage import BUSY_TIMEOUT_SECONDS, storage_faults

READ_BUSY_TIMEOUT_SECONDS = 1.0
"""How long a command that only reads (`jobs list`, `jobs show`) waits for the write lock it
needs to mark a dead owner's job interrupted; past it, the journal is read as it is."""


class JournalConnection:
    """A connection to the journal and what can be read through it; one per thread (the engine's
    heartbeat opens its own)."""

    busy_timeout = BUSY_TIMEOUT_SECONDS
    """Seconds a statement waits for another process's lock (the connection's timeout)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()  # one transaction at a time when threads share a Journal
        self._conn.row_factory = sqlite3.Row
        self._pid = os.getpid()
        self._start = process_start(self._pid)
        self._host = socket.gethostname()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, fence: tuple[str, int | None] | None = None) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction. `fence` (job id, epoch held by the caller): the
        write happens only while the job's epoch is still that one, else Superseded."""
        with self._lock, storage_faults(self.path, self.busy_timeout):
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
        with self._lock, storage_faults(self.path, self.busy_timeout):
            return self._conn.execute(sql, args).fetchall()

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):  # its records may mean what this version cannot know
            raise JournalError(
                f"the journal {self.path} is of a newer win-automation (schema {version}; this one"
                f" knows {len(MIGRATIONS)}): upgrade win-automation, or point data.dir elsewhere"
            )
        if version == len(MIGRATIONS):
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

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._query("SELECT cancel_requested FROM jobs WHERE job_id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def control(self, job_id: str) -> tuple[bool, int]:
        """(cancel requested, current owner epoch): what a running owner polls."""
        rows = self._query("SELECT cancel_requested, epoch FROM jobs WHERE job_id = ?", (job_id,))
        return (bool(rows[0][0]), int(rows[0][1])) if rows else (False, 0)

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
        """Newest first; without their input (`input_json` is ""): a list never shows it, and
        loading it made `jobs list` hold up to `limit` inputs of up to 32 MiB each at once."""
        where, args = [], []
        for clause, value in (("state = ?", state), ("workflow = ?", workflow), ("created_at >= ?", since)):
            if value is not None:
                where.append(clause)
                args.append(value)
        with self._lock, storage_faults(self.path, self.busy_timeout):
            columns = [row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")]
        listed = ", ".join(c for c in columns if c != "input_json")
        sql = f"SELECT {listed}, '' AS input_json FROM jobs" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
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

    @classmethod
    def _step_state(cls, conn: sqlite3.Connection, job_id: str, step: str) -> JobState:
        return cls._step_row(conn, job_id, step)[0]

    @staticmethod
    def _step_row(conn: sqlite3.Connection, job_id: str, step: str) -> tuple[JobState, int]:
        """The step's (state, attempts so far)."""
        row = conn.execute(
            "SELECT state, attempts FROM steps WHERE job_id = ? AND name = ?", (job_id, step)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} has no step {step}")
        return JobState(row[0]), int(row[1])

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
