"""The journal's SQLite connection: storage faults as one-line errors, fenced `BEGIN IMMEDIATE`
write transactions, reads, migrations, and the row helpers that `Journal` (win_automation.jobs.
journal) builds on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from win_automation.errors import JournalBusy, JournalError, NotFoundError, Superseded
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
from win_automation.regularfiles import kind

JOURNAL_FILE = "journal.sqlite3"
BUSY_TIMEOUT_SECONDS = 10.0
READ_BUSY_TIMEOUT_SECONDS = 1.0
"""How long a command that only reads (`jobs list`, `jobs show`) waits for the write lock it
needs to mark a dead owner's job interrupted; past it, the journal is read as it is."""
# SQLite's unix VFS takes paths of at most 512 bytes with "-journal": a longer one "unable to open"
MAX_SQLITE_PATH = 503


@contextmanager
def storage_faults(path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> Iterator[None]:
    """SQLite's errors about the file itself (corrupt, read-only, cannot be opened) as one-line
    JournalErrors that say where the journal is and what to do (JournalBusy: still locked after
    `busy_timeout` s, the connection's); constraint errors pass through."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in reason:
            raise JournalBusy(
                f"the journal {path} is locked by another process (still {reason} after"
                f" {busy_timeout:g} s); try again once it is released"
            ) from None
        if "no such table" in reason or "no such column" in reason:  # another program's database
            raise JournalError(_foreign(path, reason)) from None
        if not isinstance(exc, sqlite3.OperationalError) or "malformed" in reason:
            raise JournalError(
                f"the journal {path} is corrupt ({reason}): move it aside (mv {path} {path}.corrupt)"
                " and the next command starts a new, empty journal; the artifact folders are intact"
            ) from None
        if len(os.fsencode(path)) > MAX_SQLITE_PATH:  # SQLite's unix VFS: 512 with its "-journal"
            raise JournalError(
                f"the journal {path} cannot be used: its path is {len(os.fsencode(path))} bytes, over"
                f" the {MAX_SQLITE_PATH} SQLite opens (point data.dir, WIN_AUTOMATION_DATA_DIR, at a"
                " shorter path)"
            ) from None
        if (misplaced := _misplaced_error(path)) is not None:
            raise misplaced from None
        if (foreign := _not_writable_error(path)) is not None:
            raise foreign from None
        raise JournalError(
            f"the journal {path} cannot be used ({reason}{_disk_state(path.parent)}): data.dir"
            f" {path.parent} must be a writable folder with free space (or point data.dir,"
            " WIN_AUTOMATION_DATA_DIR, elsewhere)"
        ) from None


def _schema_problem(path: Path, conn: sqlite3.Connection) -> str | None:
    """What `open` would find wrong with the tables (for `doctor`, which only reads): a newer
    version's journal, or another program's database (an older journal is migrated by open)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        return (
            f"the journal {path} is of a newer win-automation (schema {version}; this one knows"
            f" {len(MIGRATIONS)}): upgrade win-automation, or point data.dir elsewhere"
        )
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    wanted = {"jobs": JobRecord, "steps": StepRecord, "events": EventRecord}
    try:
        if version == 0 and tables:  # migrations set the version with the tables they make
            raise sqlite3.OperationalError(f"tables {', '.join(sorted(tables))} and no schema version")
        if version == len(MIGRATIONS):
            for table, record in wanted.items():
                columns = ", ".join(field.name for field in dataclasses.fields(record))
                conn.execute(f"SELECT {columns} FROM {table} LIMIT 0")
    except sqlite3.OperationalError as exc:
        return _foreign(path, str(exc))
    return None


def _foreign(path: Path, reason: str) -> str:
    return (
        f"the journal {path} is not a win-automation journal ({reason}): move it aside (mv {path}"
        f" {path}.other) and the next command starts a new, empty journal"
    )


def journal_problem(data_dir: Path) -> str | None:
    """What is wrong with the journal in `data_dir`, as the commands would say it (corrupt, a
    directory in its place, unreadable), or None when it reads whole or is not there yet. Reads
    only: opened read-only, `PRAGMA quick_check` (for `doctor`, which changes nothing)."""
    path = data_dir / JOURNAL_FILE
    try:
        with storage_faults(path):
            if (misplaced := _misplaced_error(path)) is not None:
                return str(misplaced)
            if not path.exists():
                return None
            conn = read_only_connection(path, timeout=1.0)
            try:
                (verdict,) = conn.execute("PRAGMA quick_check(1)").fetchone()
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {verdict}")
                foreign = _schema_problem(path, conn)
            finally:
                conn.close()
            if foreign is not None:
                return foreign
            if (unwritable := _not_writable_error(path)) is not None:
                return str(unwritable)
    except JournalBusy:
        return None  # in use by a writer: nothing wrong with the file
    except JournalError as exc:
        return str(exc)
    return None


def read_only_connection(path: Path, *, timeout: float) -> sqlite3.Connection:
    """`path` opened read-only, as it is: with its -wal file (a writer has it open, or one died),
    `mode=ro`, which reads the -wal too; without one, `immutable`, which creates no -wal and -shm
    file (a read-only open of a WAL journal would leave them behind, and a read-only disk has no
    room for them)."""
    wal = path.with_name(path.name + "-wal").exists()
    mode = "mode=ro" if wal else "immutable=1"
    return sqlite3.connect(
        f"{path.absolute().as_uri()}?{mode}",
        uri=True,
        timeout=timeout,
        isolation_level=None,
        check_same_thread=False,
    )


def _journal_files(path: Path) -> tuple[Path, Path, Path]:
    """The journal and the -wal and -shm files SQLite keeps beside it."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _misplaced_error(path: Path) -> JournalError | None:
    """The error for the journal or its -wal/-shm file when something other than a regular file
    is in its place: a directory, a FIFO, a device, a symlink to one or to nothing."""
    for where in _journal_files(path):
        try:
            mode = os.stat(where).st_mode
        except FileNotFoundError:
            if not os.path.islink(where):
                continue
            what = f"a symlink to a missing {os.readlink(where)}"
        except OSError as exc:
            what = f"unusable ({exc.strerror})"
        else:
            if stat.S_ISREG(mode):
                continue
            what = kind(mode)
        return JournalError(
            f"the journal {path} cannot be used: {where} is {what}, not a file; move it aside"
            f" (mv {where} {where}.moved) and run the command again"
        )
    return None


def _not_writable_error(path: Path) -> JournalError | None:
    """The error for a journal file (or its -wal/-shm) this process may not write, by its
    permissions: another user's, say made by a `sudo win-automation` run (a read-only disk is
    _disk_state's to say). Only asked once SQLite failed. Asked with access(2), never by opening
    the file: closing any descriptor of it drops every POSIX lock this process holds on it, SQLite's
    included (another process then deleted the WAL under a live connection: writes lost)."""
    for where in _journal_files(path):
        try:
            info = os.stat(where)
        except OSError:  # not there
            continue
        if not stat.S_ISREG(info.st_mode) or os.access(where, os.W_OK, effective_ids=True):
            continue
        with contextlib.suppress(OSError):
            if os.statvfs(where).f_flag & os.ST_RDONLY:  # a read-only disk: _disk_state says it
                continue
        owner = info.st_uid
        if owner == os.geteuid():  # one's own file, made read-only
            return JournalError(
                f"the journal {path} cannot be used: {where} is read-only (mode"
                f" {stat.filemode(info.st_mode)[1:]}); make it writable (chmod u+w {path}*: SQLite"
                " gives its -wal and -shm files the journal's mode), or point data.dir"
                " (WIN_AUTOMATION_DATA_DIR) elsewhere"
            )
        return JournalError(
            f"the journal {path} cannot be used: {where} is not writable by you (owned by uid"
            f" {owner}{', root: made by a sudo run?' if owner == 0 else ''}); give it back"
            f" (sudo chown {os.geteuid()} {where}), or point data.dir (WIN_AUTOMATION_DATA_DIR)"
            " elsewhere"
        )
    return None


def _disk_state(folder: Path) -> str:
    """What SQLite's "disk I/O error" or "readonly database" often means, said plainly: the disk
    holding `folder` is full or read-only, or the folder is not one this process may write ("" when
    none of these, or when it cannot be told)."""
    try:
        info = os.statvfs(folder)
        writable = os.access(folder, os.W_OK | os.X_OK, effective_ids=True)
        folder_stat = os.stat(folder)
    except OSError:
        return ""
    if info.f_flag & os.ST_RDONLY:
        return "; the file system is read-only"
    if info.f_bavail == 0 or (info.f_favail == 0 and info.f_files > 0):
        return "; no space left on its disk"
    if not writable:
        mode = stat.filemode(folder_stat.st_mode)[1:]
        return f"; the folder is not writable by you (mode {mode}, owned by uid {folder_stat.st_uid})"
    return ""


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
