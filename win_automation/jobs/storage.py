"""The journal's file and what can go wrong with it: storage faults as one-line errors that say
where the journal is and what to do (`storage_faults`), the same words for `doctor` from a
read-only look (`journal_problem`), and the read-only connection both use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from win_automation.errors import JournalBusy, JournalError
from win_automation.jobs.records import EventRecord, JobRecord, StepRecord
from win_automation.jobs.schema import MIGRATIONS
from win_automation.regularfiles import kind

JOURNAL_FILE = "journal.sqlite3"
BUSY_TIMEOUT_SECONDS = 10.0
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
