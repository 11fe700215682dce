"""How a job ended (`JobOutcome`, shared by both engines) and how a step's error is recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from win_automation.artifacts.store import job_folder, safe_relative
from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.errors import Cancelled, Skipped, WinAutomationError
from win_automation.jobs.journal import Journal
from win_automation.jobs.records import JobRecord
from win_automation.jobs.state import JobState
from win_automation.log import redact


@dataclass
class JobOutcome:
    """How a job ended: its state, each finished step's output, and the first error."""

    job_id: str
    trace_id: str
    workflow: str
    state: JobState
    outputs: dict[str, BaseModel] = field(default_factory=dict)
    error: str | None = None
    error_code: int | None = None
    skipped: list[str] = field(default_factory=list)
    """Steps that raised errors.Skipped (nothing to do); with no failure the job ends `skipped`."""
    engine: str = "local"
    artifacts_dir: Path | None = None
    """The job's artifact folder on this host (None when it ran elsewhere)."""

    def artifact_text(self, name: str) -> str | None:
        """The text of the job's artifact `name` (UTF-8), or None when it is not on this host."""
        if self.artifacts_dir is None:
            return None
        try:
            return (self.artifacts_dir / safe_relative(name)).read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return None

    @property
    def exit_code(self) -> int:
        if self.state in (JobState.SUCCEEDED, JobState.SKIPPED):
            return 0
        if self.state in (JobState.CANCELLED, JobState.INTERRUPTED):
            return Cancelled.exit_code
        return self.error_code or 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "trace_id": self.trace_id,
            "workflow": self.workflow,
            "state": self.state.value,
            "error": self.error,
            "outputs": {name: out.model_dump(mode="json") for name, out in self.outputs.items()},
        }


def outcome_of(
    journal: Journal, workflow: Workflow, job_id: str, outputs: dict[str, BaseModel], artifacts_root: Path
) -> JobOutcome:
    """The outcome of job `job_id` as the journal records it, with the steps' outputs."""
    job = journal.get_job(job_id)
    outcome = JobOutcome(
        job_id, job.trace_id, workflow.name, job.state, dict(outputs), job.error, job.error_code
    )
    outcome.engine = job.engine
    outcome.artifacts_dir = job_folder(artifacts_root_of(job, artifacts_root), job_id)
    outcome.skipped = [
        s.name for s in journal.steps(job_id) if s.state == JobState.SKIPPED and s.output_json is not None
    ]
    return outcome


def artifacts_root_of(job: JobRecord, default: Path) -> Path:
    """The folder holding the job's artifact folder: as the journal recorded it when the job was
    created (absolute), else `default` (artifacts.out_dir) made absolute."""
    if job.artifacts_dir is not None:
        return Path(job.artifacts_dir).parent
    return Path(os.path.abspath(default))


def artifacts_root(job: JobRecord, config: Config) -> Path:
    return artifacts_root_of(job, config.artifacts.out_dir)


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line, redacted message and the exit code recorded for a failed attempt."""
    if isinstance(exc, WinAutomationError):
        return redact(str(exc)), exc.exit_code
    return redact(f"{type(exc).__name__}: {exc}".splitlines()[0]), 1


def checked_output(step: Step, value: object) -> BaseModel:
    """`value` when it is the step's output type; a TypeError naming the step otherwise."""
    if not isinstance(value, step.output):
        raise TypeError(f"step {step.name} returned {type(value).__name__}, not {step.output.__name__}")
    return value


def skipped_output(step: Step, skipped: Skipped) -> BaseModel:
    """The result a step's Skipped carries, which stands for its output; a TypeError if it cannot."""
    if not isinstance(skipped.result, step.output):
        raise TypeError(f"step {step.name}: Skipped must carry a {step.output.__name__}")
    return skipped.result


def failed_output(exc: BaseException, output: type[BaseModel]) -> BaseModel | None:
    """The result a failed step's error carries (a CommandFailed's command result), when it is of
    the step's output type: journaled with the failure, so `jobs show` and the CLI still have it."""
    result = getattr(exc, "result", None)
    return result if isinstance(result, output) else None


def retryable(exc: BaseException) -> bool:
    return not isinstance(exc, WinAutomationError) or exc.transient
