"""The journal's rows as plain dataclasses: a job, one of its steps, one recorded event."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from win_automation.errors import JournalError
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


_STATES = frozenset(state.value for state in JobState)
_TIMES = ("created_at", "started_at", "finished_at", "updated_at", "heartbeat_at", "ts")
_YEAR_10000 = 253402300800.0


def _values(row: sqlite3.Row) -> dict[str, Any]:
    """The row's columns, its times checked: a record edited by hand (or written by a newer
    version) is a JournalError naming the job and the column, not a traceback where it is shown."""
    values = dict(zip(row.keys(), tuple(row), strict=True))
    for name in _TIMES:
        value = values.get(name)
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < _YEAR_10000
        ):
            _unreadable(values, name, value, "not a time")
    return values


def _state(values: dict[str, Any]) -> JobState:
    """A job's or step's state (an event's is free text)."""
    if values["state"] not in _STATES:
        _unreadable(values, "state", values["state"], "a state this version does not know")
    return JobState(values["state"])


def _unreadable(values: dict[str, Any], name: str, value: Any, what: str) -> None:
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:30]}..."
    raise JournalError(
        f"the journal's record of job {values.get('job_id')!r} has {name} {shown}, {what} (edited"
        " by hand, or written by a newer win-automation?)"
    )


def job_from_row(row: sqlite3.Row) -> JobRecord:
    values = _values(row)
    values["state"] = _state(values)
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


def step_from_row(row: sqlite3.Row) -> StepRecord:
    values = _values(row)
    return StepRecord(**values | {"state": _state(values)})


def event_from_row(row: sqlite3.Row) -> EventRecord:
    return EventRecord(**_values(row))
