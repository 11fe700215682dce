"""Retention as the schedulers apply it: the supervisor after each pass (it may be the host's only
scheduler: a pass a minute is a job, with a folder and ~3 KB of journal records, which stayed for
good) and the worker every hour: job folders past `artifacts.retention_days`, journal records of
jobs that ended past `data.journal_retention_days`; 0 keeps each."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import tmpfs
from fixture_sshd import free_port

from win_automation.artifacts.retention import scheduled_retention
from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import load_config
from win_automation.errors import StorageError
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState

DAY = 86400.0


def old_job(data: Path, artifacts: Path, age: float) -> str:
    """A ping job that ended `age` seconds ago, with its artifact folder."""
    job_id = new_job_id(time.time() - age)
    with Journal.open(data) as journal:
        journal.create_job("ping", "{}", steps=["check-engine"], job_id=job_id, artifacts_root=artifacts)
        journal.start_job(job_id)
        journal.set_job_state(job_id, JobState.SUCCEEDED)
    conn = sqlite3.connect(data / "journal.sqlite3")
    with conn:
        conn.execute(
            "UPDATE jobs SET created_at = ?, finished_at = ? WHERE job_id = ?",
            (time.time() - age,) * 2 + (job_id,),
        )
    conn.close()
    writer = ArtifactWriter(artifacts, job_id, new_trace_id(), time.time() - age, types=("ping",))
    writer.write_text("ping", "ping.json", "{}")
    return job_id


@pytest.mark.parametrize("keep", [False, True], ids=["retention", "zero-keeps-all"])
def test_a_supervisor_pass_applies_retention(cli, cli_env: dict[str, str], keep: bool) -> None:  # type: ignore[no-untyped-def]
    data, artifacts = Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), Path(cli_env["WIN_AUTOMATION_ARTIFACT_OUT"])
    ages = {"month-old": 40 * DAY, "ten-days": 10 * DAY, "fresh": 3600.0}
    ids = {label: old_job(data, artifacts, age) for label, age in ages.items()}
    env = {"WIN_AUTOMATION_SSH_HOST": "127.0.0.1", "WIN_AUTOMATION_SSH_PORT": str(free_port())}
    if keep:
        env |= {"WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS": "0", "WIN_AUTOMATION_JOURNAL_RETENTION_DAYS": "0"}
    ran = cli("supervisor", "run", "--once", "--json", env=env)
    assert ran.code == 1, ran.stderr  # no VM there: the checks fail; the pass itself ran
    pass_id = json.loads(ran.stdout)["job_id"]
    listed = cli("jobs", "list", "--json", "--limit", "100")
    recorded = {job["job_id"] for job in json.loads(listed.stdout)}
    folders = {path.name for path in artifacts.iterdir()}
    if keep:
        assert recorded == folders == {*ids.values(), pass_id}
    else:  # folders past 7 days, records past 30 days; the pass's own job stays
        assert folders == {ids["fresh"], pass_id}
        assert recorded == {ids["ten-days"], ids["fresh"], pass_id}


def test_a_folder_that_cannot_be_removed_stops_neither_the_others_nor_the_next_prune(
    cli, cli_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """One old folder that cannot be removed (here a file system mounted in it: EBUSY), one whose
    manifest is a folder: `prune` stopped at the first such folder (exit 74) and pruned none
    after it, and the supervisor's retention with it, journal records included; the removal that
    failed had deleted the manifest first, so the folder's fresh mtime kept it for good."""
    data, artifacts = Path(cli_env["WIN_AUTOMATION_DATA_DIR"]), Path(cli_env["WIN_AUTOMATION_ARTIFACT_OUT"])
    old = [old_job(data, artifacts, age * DAY) for age in (40, 39, 38)]
    fresh = old_job(data, artifacts, 3600.0)
    busy, odd = artifacts / old[1], artifacts / old[2]
    (odd / "manifest.json").unlink()
    (odd / "manifest.json").mkdir()
    os.utime(odd, (time.time() - 38 * DAY,) * 2)
    with tmpfs(busy / "screens", "1m"):
        res = cli("artifacts", "prune", "--older-than", "1d")
        assert (res.code, res.stderr) == (
            74,
            f"error: artifacts.out_dir: cannot remove {busy}: Device or resource busy;"
            " 2 other folder(s) pruned\n",
        )
        assert sorted(p.name for p in artifacts.iterdir()) == sorted([old[1], fresh])
        assert (busy / "manifest.json").is_file()  # removed last: what dates the folder stays
        config = load_config(environ=cli_env).config
        with pytest.raises(StorageError, match="cannot remove"):
            scheduled_retention(config)
        listed = json.loads(cli("jobs", "list", "--json", "--limit", "100").stdout)
        assert [job["job_id"] for job in listed] == [fresh]  # the records past 30 days went all the same
    again = cli("artifacts", "prune", "--older-than", "1d")
    assert again.code == 0, again.stderr
    assert [p.name for p in artifacts.iterdir()] == [fresh]
