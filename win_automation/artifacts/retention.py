"""Retention as every scheduler applies it: the CLI (`artifacts prune`), the worker and the supervisor.

`apply_retention(config)` deletes the job folders under `artifacts.out_dir` older than
`artifacts.retention_days` (or `older_than_seconds`), keeping the folders of jobs the journal
still has queued or running. See win_automation.artifacts.prune for the exact boundaries.
`remove_partials(config)` deletes the stale `.tmp-*` files (a writer killed mid-write) left in
the job folders that remain (win_automation.partfiles says when one is stale).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from win_automation.artifacts.store import TEMP_PREFIX, PruneResult, prune
from win_automation.config import Config
from win_automation.jobs.ids import is_job_id
from win_automation.jobs.journal import Journal
from win_automation.partfiles import is_stale

log = logging.getLogger(__name__)
DAY = 86400.0


def apply_retention(
    config: Config,
    *,
    older_than_seconds: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[PruneResult]:
    seconds = config.artifacts.retention_days * DAY if older_than_seconds is None else older_than_seconds
    with Journal.open(config.data.dir) as journal:
        active = frozenset(journal.active_job_ids())
    pruned = prune(config.artifacts.out_dir, seconds, now=now, dry_run=dry_run, keep=active)
    if pruned and not dry_run:
        log.info(
            "artifacts pruned",
            extra={"op": "prune", "folders": len(pruned), "bytes": sum(p.size_bytes for p in pruned)},
        )
    return pruned


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
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
