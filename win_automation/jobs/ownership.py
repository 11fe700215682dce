"""Opening the journal, and who owns a job: heartbeats, cancel requests, and the recovery of
the jobs whose owner is gone (win_automation.jobs.journal's Journal builds on this).

A job in `queued` or `running` has an owner: a pid (with its start time, so a reused pid is not
mistaken for the owner) on a host, and a heartbeat. `open` marks `interrupted` every such
local-engine job whose owner is dead (a process of this host that exited) or, for an owner on
another host, whose heartbeat is older than HEARTBEAT_EXPIRY: no job stays "running" after its
owner is gone. An owner of this host that is alive but silent (stopped, the machine suspended)
keeps its job until it exits, or until `jobs resume` takes the job over. Jobs of another engine
(`engine='hatchet'`) are left to that engine: the run goes on without the process that triggered
it, so its record is brought up to date from the engine (the Hatchet layer's sync), not from the
owner pid.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Self

from win_automation.errors import JournalError, StorageError
from win_automation.jobs.connection import READ_BUSY_TIMEOUT_SECONDS, JournalConnection
from win_automation.jobs.owners import process_alive
from win_automation.jobs.records import JobRecord
from win_automation.jobs.schema import MIGRATIONS
from win_automation.jobs.state import ACTIVE, JobState
from win_automation.jobs.storage import (
    BUSY_TIMEOUT_SECONDS,
    JOURNAL_FILE,
    read_only_connection,
    storage_faults,
)

HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_EXPIRY = 30.0


class JournalOwnership(JournalConnection):
    """The journal opened (created, migrated, dead owners' jobs recovered), and its owners."""

    read_only = False
    """True when opened by `open_to_read` on a journal that cannot be written."""

    @classmethod
    def open(
        cls, data_dir: Path, *, recover: bool = True, busy_timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> Self:
        """The journal in `data_dir` (created and migrated as needed); a write waits up to
        `busy_timeout` seconds for another process's lock, then raises JournalBusy."""
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            reason = "it is a file" if isinstance(exc, FileExistsError) else exc.strerror
            raise StorageError(
                f"data.dir {data_dir}: cannot create it ({reason}); point data.dir"
                " (WIN_AUTOMATION_DATA_DIR) at a writable folder"
            ) from None
        path = data_dir / JOURNAL_FILE
        with storage_faults(path, busy_timeout):
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                journal = cls(path, conn)
                journal.busy_timeout = busy_timeout
                journal._migrate()
                if recover:
                    journal.recover_interrupted()
            except BaseException:
                conn.close()
                raise
        return journal

    @classmethod
    def open_to_read(
        cls, data_dir: Path, *, busy_timeout: float = READ_BUSY_TIMEOUT_SECONDS
    ) -> tuple[Self, JournalError | None]:
        """The journal for a command that only reads it (`jobs list`, `jobs show`): as `open`
        gives it, or, when it cannot be written (a read-only disk or file, a full disk, another
        process's lock past `busy_timeout` while a dead owner's job waited to be marked), opened
        read-only and read as it is (jobs of owners that died are not marked interrupted then),
        with open's error, for a note. Raises open's error when it cannot be read either. A
        reader waits `busy_timeout` (1 s) for that lock, not a writer's 10 s: a stopped process
        holding it (Ctrl-Z mid-transaction) does not hold up `jobs list`; its later writes (a
        Hatchet job's refresh) wait as a writer's do."""
        try:
            journal = cls.open(data_dir, busy_timeout=busy_timeout)
        except JournalError as exc:  # JournalBusy too: WAL readers are not held by a writer
            refused = exc
        else:
            journal._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            journal.busy_timeout = BUSY_TIMEOUT_SECONDS
            return journal, None
        path = data_dir / JOURNAL_FILE
        if not path.is_file():
            raise refused
        try:
            with storage_faults(path):
                conn = read_only_connection(path, timeout=BUSY_TIMEOUT_SECONDS)
                try:
                    journal = cls(path, conn)
                    if journal.schema_version != len(MIGRATIONS):
                        raise refused  # an older one, which only a writer migrates
                    journal.list_jobs(limit=1)  # it reads
                except BaseException:
                    conn.close()
                    raise
        except JournalError:
            raise refused from None
        journal.read_only = True
        return journal, refused

    def heartbeat(self, jobs: dict[str, int | None]) -> None:
        """Refresh the heartbeat of each job id whose epoch is still the one given (None: any)."""
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE jobs SET heartbeat_at = ? WHERE job_id = ? AND (? IS NULL OR epoch = ?)",
                [(now, job_id, epoch, epoch) for job_id, epoch in jobs.items()],
            )

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

    def recover_interrupted(self, *, take_over: str | None = None) -> list[str]:
        """Mark interrupted every active local job whose owner is gone: a process of this host
        that has exited, or an owner on another host (whose process cannot be looked up) whose
        heartbeat is older than HEARTBEAT_EXPIRY. An owner of this host that is alive but silent
        (stopped by Ctrl-Z or SIGSTOP, the machine suspended) keeps its job: it goes on when
        continued. `take_over` (a job id: `jobs resume`) takes that job from such an owner too,
        which is then fenced. Hatchet jobs are left alone: the engine owns them (it reassigns a
        dead worker's tasks)."""
        now = time.time()
        rows = self._query(
            "SELECT job_id, owner_pid, owner_start, owner_host, heartbeat_at, cancel_requested FROM jobs"
            " WHERE state IN ('queued', 'running') AND engine = 'local'"
        )
        dead = []
        for row in rows:
            expired = row["heartbeat_at"] is None or now - row["heartbeat_at"] > HEARTBEAT_EXPIRY
            if row["owner_host"] == self._host and row["owner_pid"] is not None:
                alive = process_alive(row["owner_pid"], row["owner_start"])
                gone = not alive or (expired and row["job_id"] == take_over)
            else:
                gone = expired
            if gone:
                dead.append((row["job_id"], bool(row["cancel_requested"])))
        interrupted = []
        for job_id, cancelled in dead:
            with self._write() as conn:
                state = self._job_state(conn, job_id)
                if state not in ACTIVE:
                    continue  # its owner finished it meanwhile
                # A cancel the owner acknowledged but never took (stopped, then killed) is kept: an
                # interrupted job would be resumed, and run to the end, despite it.
                ended, message = (
                    (JobState.CANCELLED, "cancelled by request; its owner process died before it stopped")
                    if cancelled
                    else (JobState.INTERRUPTED, "owner process died or stopped heart-beating")
                )
                conn.execute(
                    "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ?, error = ?, epoch = epoch + 1"
                    " WHERE job_id = ?",
                    (ended, now, now, message, job_id),
                )
                conn.execute(
                    "UPDATE steps SET state = ?, finished_at = ? WHERE job_id = ? AND state = 'running'",
                    (ended, now, job_id),
                )
                self._event(conn, job_id, None, ended, None, message, now)
                interrupted.append(job_id)
        return interrupted
