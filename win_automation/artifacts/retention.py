"""Retention as every scheduler applies it: the CLI (`artifacts prune`), the worker and the supervisor.

`apply_retention(config)` deletes the job folders under `artifacts.out_dir` older than
`artifacts.retention_days` (or `older_than_seconds`), keeping the folders of jobs the journal
still has queued or running. See win_automation.artifacts.prune for the exact boundaries.
"""

from __future__ import annotations

import logging

from win_automation.artifacts.store import PruneResult, prune
from win_automation.config import Config
from win_automation.jobs.journal import Journal

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
