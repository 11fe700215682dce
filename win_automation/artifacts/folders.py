"""Where a job's artifact folder is: the absolute path the journal recorded when the job was
created, so that `artifacts list|verify|fetch` and `jobs show` find it from any working directory
(`artifacts.out_dir` may be relative). Jobs recorded before the journal kept the path, and jobs
the journal of this host does not know (or a journal that cannot be read), fall back to
`<artifacts.out_dir>/<job_id>` made absolute.
"""

from __future__ import annotations

import os
from pathlib import Path

from win_automation.artifacts.store import job_folder
from win_automation.config import Config
from win_automation.errors import NotFoundError, StorageError
from win_automation.jobs.ids import validate_job_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.storage import JOURNAL_FILE


def recorded_folder(config: Config, job_id: str) -> Path | None:
    """The folder the journal recorded for `job_id` (the id validated first), or None."""
    validate_job_id(job_id)
    if not (config.data.dir / JOURNAL_FILE).is_file():
        return None  # no journal here: do not create one to answer a question
    try:
        with Journal.open(config.data.dir, recover=False) as journal:
            job = journal.get_job(job_id)
    except (NotFoundError, StorageError):  # unknown here, or a broken journal: artifacts still count
        return None
    return Path(job.artifacts_dir) if job.artifacts_dir else None


def job_artifacts(config: Config, job_id: str) -> Path:
    """The job's artifact folder on this host (it may not exist)."""
    folder = recorded_folder(config, job_id)
    if folder is not None:
        return folder
    return job_folder(Path(os.path.abspath(config.artifacts.out_dir)), job_id)
