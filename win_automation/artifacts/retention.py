"""Retention as every scheduler applies it: the CLI (`artifacts prune`), the worker and the supervisor.

`scheduled_retention(config)` is what the worker (every hour) and the supervisor (after each
pass) apply: job folders past `artifacts.retention_days` and the journal's records of jobs that
ended past `data.journal_retention_days` (a supervisor every minute adds ~3 KB of records and
~7 KB of folder a pass: 15 MB a day, for good, before).

`apply_retention(config)` deletes the job folders under `artifacts.out_dir` older than
`artifacts.retention_days` (or `older_than_seconds`), keeping the folders of jobs the journal
still has queued or running. `prune` has the exact boundaries.
`remove_partials(config)` deletes the stale `.tmp-*` files (a writer killed mid-write) left in
the job folders that remain (win_automation.partfiles says when one is stale).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from win_automation.artifacts.store import MANIFEST, TEMP_PREFIX, read_manifest
from win_automation.config import Config
from win_automation.errors import ArtifactMismatch, NotFoundError, StorageError
from win_automation.jobs.ids import JOB_ID_TIME_CHARS, is_job_id, new_job_id
from win_automation.jobs.journal import Journal
from win_automation.partfiles import is_stale

log = logging.getLogger(__name__)
DAY = 86400.0


@dataclass(frozen=True)
class PruneResult:
    job_id: str
    created_at: float
    size_bytes: int


def folder_created_at(folder: Path) -> float:
    """When the job's artifacts were started: the manifest's created_at, else (none, corrupt,
    unreadable: a folder or a FIFO in its place) the folder's mtime."""
    try:
        return read_manifest(folder).created_timestamp()
    except (NotFoundError, ArtifactMismatch, StorageError, ValueError):
        return folder.stat().st_mtime


def _remove_folder(folder: Path) -> None:
    """Delete a job folder, its manifest last: a removal that fails part way (a read-only disk, a
    folder that cannot be emptied) leaves the manifest that dates it, so the next prune tries
    again (without it, the folder's fresh mtime kept it for another retention period)."""
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name == MANIFEST)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    folder.rmdir()


def prune(
    root: Path,
    older_than_seconds: float,
    *,
    now: float | None = None,
    dry_run: bool = False,
    keep: frozenset[str] = frozenset(),
) -> list[PruneResult]:
    """Delete job folders created strictly more than `older_than_seconds` ago (a folder exactly
    at the boundary is kept): by the time in their job id and by their manifest's created_at,
    both. Only folders named like job ids are considered; ids in `keep` (jobs still active) are
    never deleted. A folder that cannot be removed does not stop the others: StorageError naming
    it (and how many more) once the rest are pruned."""
    now = time.time() if now is None else now
    cutoff = now - older_than_seconds
    pruned: list[PruneResult] = []
    if not root.is_dir():
        return pruned
    # a job's folder is made after its id, and ids sort by their time as strings: a folder whose
    # id's time is at the cut-off or later is kept without a read (a week of folders, one a
    # minute, and the journal's share: 5.5 ms for all of scheduled_retention)
    newest = new_job_id(cutoff)[:JOB_ID_TIME_CHARS]
    failed: list[str] = []
    for name in sorted(os.listdir(root)):
        if name[:JOB_ID_TIME_CHARS] >= newest or not is_job_id(name) or name in keep:
            continue
        folder = root / name
        if not folder.is_dir() or folder.is_symlink():
            continue
        created = folder_created_at(folder)
        if created >= cutoff:
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        if not dry_run:
            try:
                _remove_folder(folder)
            except OSError as exc:  # a read-only disk (remounted after an error): one line, 74
                failed.append(f"{folder}: {exc.strerror or exc}")
                continue
        pruned.append(PruneResult(folder.name, created, size))
    if failed:
        more = f" (and {len(failed) - 1} more folder(s))" if len(failed) > 1 else ""
        done = f"; {len(pruned)} other folder(s) pruned" if pruned else ""
        raise StorageError(f"artifacts.out_dir: cannot remove {failed[0]}{more}{done}")
    return pruned


def apply_retention(
    config: Config,
    *,
    older_than_seconds: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    journal: Journal | None = None,
) -> list[PruneResult]:
    """`prune` of artifacts.out_dir past `artifacts.retention_days` (or `older_than_seconds`),
    keeping active jobs' folders (read from `journal`, else from one opened for it)."""
    seconds = config.artifacts.retention_days * DAY if older_than_seconds is None else older_than_seconds
    if journal is None:
        with Journal.open(config.data.dir) as opened:
            active = frozenset(opened.active_job_ids())
    else:
        active = frozenset(journal.active_job_ids())
    pruned = prune(config.artifacts.out_dir, seconds, now=now, dry_run=dry_run, keep=active)
    if pruned and not dry_run:
        log.info(
            "artifacts pruned",
            extra={"op": "prune", "folders": len(pruned), "bytes": sum(p.size_bytes for p in pruned)},
        )
    return pruned


def scheduled_retention(config: Config) -> tuple[int, int]:
    """What the schedulers apply (the worker every hour, the supervisor after each pass): job
    folders past `artifacts.retention_days` and the journal's records of jobs that ended past
    `data.journal_retention_days`, each unless 0; (folders, records) pruned. One journal opened
    for both; cheap when there is nothing to prune: folders are told apart by the time in their
    job id, records by an index."""
    artifact_days, record_days = config.artifacts.retention_days, config.data.journal_retention_days
    if artifact_days <= 0 and record_days <= 0:
        return 0, 0
    failure: StorageError | None = None
    with Journal.open(config.data.dir) as journal:
        try:
            folders = len(apply_retention(config, journal=journal)) if artifact_days > 0 else 0
        except StorageError as exc:  # a folder that cannot be removed: the records still are
            folders, failure = 0, exc
        records = journal.prune_ended(time.time() - record_days * DAY) if record_days > 0 else 0
    if records:
        log.info("journal records pruned", extra={"op": "prune", "jobs": records})
    if failure is not None:
        raise failure
    return folders, records


def remove_partials(config: Config, *, dry_run: bool = False) -> list[Path]:
    """Delete the stale partial files in every job folder under artifacts.out_dir."""
    root = config.artifacts.out_dir
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.is_symlink() and is_job_id(folder.name):
            removed += remove_stale_temps(folder, dry_run=dry_run)
    if removed and not dry_run:
        log.info("stale partial files removed", extra={"op": "prune", "files": len(removed)})
    return removed


def remove_stale_temps(folder: Path, *, dry_run: bool = False) -> list[Path]:
    """Delete the `.tmp-*` files under `folder` whose writer is gone (partfiles.is_stale)."""
    removed = []
    for path in folder.rglob(f"{TEMP_PREFIX}*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and is_stale(path.name, info.st_mtime):
            if not dry_run:
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # a read-only disk: left for a later pass
                    continue
            removed.append(path)
    return removed
