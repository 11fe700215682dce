"""Job ids and trace ids: how the project makes them, and the check every id from outside passes.

A job id is `YYYYMMDDTHHMMSSmmmZ-xxxxxxxxxxxx`: the UTC creation time to the millisecond, then 12
random hex digits (48 bits). Ids sort by creation time as plain strings, are unique across
processes without coordination, and hold only ASCII `[0-9TZa-f-]`, so one is always safe as a
folder name (digits in any other script, Arabic-Indic or fullwidth, are refused). A trace id is
32 random hex digits (the W3C trace-context form).

`validate_job_id` is applied to every job id that comes from a user, a file or another engine
before anything touches the filesystem: `../x`, an absolute path or `''` raise UsageError (exit 2).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime

from win_automation.errors import UsageError

# `[0-9]`, not `\d`: `\d` also matches Arabic-Indic, fullwidth and every other Unicode digit.
JOB_ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{12}$", re.ASCII)
TRACE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
JOB_ID_FORM = "YYYYMMDDTHHMMSSmmmZ-<12 hex digits>, as `run` prints it"
JOB_ID_TIME_CHARS = 19
"""The time part of a job id (`YYYYMMDDTHHMMSSmmmZ`): ids compare by it as strings."""


def new_job_id(now: float | None = None) -> str:
    """A fresh, time-sortable job id."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(6)}"


def new_trace_id() -> str:
    return secrets.token_hex(16)


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) is not None


def validate_job_id(value: object, *, name: str = "JOB_ID") -> str:
    """`value` when it is a job id of the generated form; else UsageError naming `name`."""
    if not is_job_id(value):
        shown = value if isinstance(value, str) else type(value).__name__
        raise UsageError(f"{name}: {shown!r} is not a job id (expected {JOB_ID_FORM})")
    assert isinstance(value, str)
    return value


def job_id_time(job_id: str) -> float:
    """The creation time (epoch seconds) encoded in a valid job id."""
    moment = datetime.strptime(job_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return moment.timestamp() + int(job_id[15:18]) / 1000
