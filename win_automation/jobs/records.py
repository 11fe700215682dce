"""The journal's rows as plain dataclasses: a job, one of its steps, one recorded event."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from win_automation.jobs.state import JobState


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    trace_id: str
    workflow: str
    engine: str
    external_id: str | None
    state: JobState
    input_json: str
    error: str | None
    error_code: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    owner_pid: int | None
    owner_start: str | None
    owner_host: str | None
    heartbeat_at: float | None
    cancel_requested: bool
    epoch: int
    artifacts_dir: str | None = None
    """The job's artifact folder (absolute), as recorded when the job was created."""


@dataclass(frozen=True)
class StepRecord:
    job_id: str
    name: str
    position: int
    state: JobState
    attempts: int
    output_json: str | None
    error: str | None
    error_code: int | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class EventRecord:
    id: int
    job_id: str
    step: str | None
    state: str
    attempt: int | None
    message: str | None
    ts: float


def _values(row: sqlite3.Row) -> dict[str, Any]:
    return dict(zip(row.keys(), tuple(row), strict=True))


def job_from_row(row: sqlite3.Row) -> JobRecord:
    values = _values(row)
    values["state"] = JobState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


def step_from_row(row: sqlite3.Row) -> StepRecord:
    return StepRecord(**_values(row) | {"state": JobState(row["state"])})


def event_from_row(row: sqlite3.Row) -> EventRecord:
    return EventRecord(**_values(row))
