"""What a Hatchet task does on the worker's host, without the SDK: run one step and journal it.

`TaskRuntime.run_step` is called (in a thread, off the worker's event loop) by each compiled task
in win_automation.engines.hatchet. It finds or records the job in the local journal
(`engine='hatchet'`, the Hatchet run id as `external_id`; the job id chosen by the trigger travels
in the run's additional metadata, so a trigger on the same host and the worker share one record),
records the attempt, runs the plain step function with a `LocalStepContext` (parents' outputs,
the job's artifact writer, a cancel flag) and records the result. The job is marked succeeded
when all its steps succeeded, failed when a step failed for good.

Retries are the engine's: a failed attempt raises `StepFailure`, whose `retry` says whether the
engine may try again (a non-transient project error, such as an SSH authentication failure, may
not; the Hatchet boundary turns that into NonRetryableException). The failure travels as text:
`message [exit N]`, so the side that waits for the run can exit with the step's code.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from win_automation import metrics
from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.engines.context import LocalStepContext
from win_automation.engines.outcome import (
    checked_output,
    describe,
    failed_output,
    retryable,
    skipped_output,
)
from win_automation.errors import Cancelled, IllegalTransition, Skipped
from win_automation.jobs.ids import is_job_id, new_job_id, new_trace_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.records import JobRecord
from win_automation.jobs.state import ACTIVE, JobState
from win_automation.log import redact

log = logging.getLogger(__name__)
ENGINE = "hatchet"
_EXIT = re.compile(r"\s*\[exit (\d+)\]\s*$")


class StepFailure(Exception):
    """A failed attempt as the engine sees it: `message [exit N]`; `retry` False means final."""

    def __init__(self, message: str, exit_code: int, *, retry: bool) -> None:
        super().__init__(f"{message} [exit {exit_code}]")
        self.message = message
        self.exit_code = exit_code
        self.retry = retry


def parse_failure(text: str) -> tuple[str, int]:
    """(message, exit code) from a task's error text as Hatchet reports it (first line, with the
    exception type the SDK puts in front removed)."""
    first = text.strip().splitlines()[0] if text.strip() else "the step failed"
    _, sep, rest = first.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", _):
        first = rest
    match = _EXIT.search(first)
    if match is None:
        return first, 1
    return first[: match.start()], int(match.group(1))


def record_job(
    journal: Journal, workflow: Workflow, input: BaseModel, *, job_id: str, trace_id: str, run_id: str
) -> JobRecord:
    """Record Hatchet run `run_id` as job `job_id`, or adopt the record another process (the
    trigger, or the worker on this host) made first."""
    try:
        job = journal.create_job(
            workflow.name,
            input.model_dump_json(),
            steps=[s.name for s in workflow.steps],
            engine=ENGINE,
            external_id=run_id,
            job_id=job_id,
            trace_id=trace_id,
        )
    except sqlite3.IntegrityError:
        journal.set_external_id(job_id, run_id)
        return journal.get_job(job_id)
    metrics.inc("jobs_enqueued_total")
    return job


class TaskRuntime:
    """One per worker process: a journal connection (serialised by a lock) and the job writers."""

    def __init__(self, config: Config, journal: Journal | None = None) -> None:
        self.config = config
        self.journal = journal or Journal.open(config.data.dir)
        self.lock = threading.RLock()
        self._writers: dict[str, ArtifactWriter] = {}

    def close(self) -> None:
        self.journal.close()

    def job_for(
        self, workflow: Workflow, run_id: str, metadata: Mapping[str, Any], input: BaseModel
    ) -> JobRecord:
        """The journal record of Hatchet run `run_id`, created on first sight (or adopted, when the
        trigger on this host recorded it under the job id it sent in the run's metadata)."""
        with self.lock:
            job = self.journal.find_external(ENGINE, run_id)
            if job is not None:
                return job
            wanted, trace = metadata.get("job_id"), metadata.get("trace_id")
            return record_job(
                self.journal,
                workflow,
                input,
                job_id=str(wanted) if is_job_id(wanted) else new_job_id(),
                trace_id=trace if isinstance(trace, str) and trace else new_trace_id(),
                run_id=run_id,
            )

    def _writer(self, job: JobRecord) -> ArtifactWriter:
        with self.lock:
            writer = self._writers.get(job.job_id)
            if writer is None:
                writer = ArtifactWriter(
                    self.config.artifacts.out_dir, job.job_id, job.trace_id, job.created_at
                )
                self._writers[job.job_id] = writer
            return writer

    def _record(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A journal write that may lose a race (a cancel recorded meanwhile): logged, not fatal."""
        with self.lock:
            try:
                fn(*args, **kwargs)
            except IllegalTransition as exc:
                log.info("journal left as it is", extra={"op": what, "err": str(exc)})

    def run_step(
        self,
        workflow: Workflow,
        step: Step,
        input: BaseModel,
        *,
        run_id: str,
        metadata: Mapping[str, Any],
        retry_count: int,
        parents: Mapping[str, BaseModel],
        cancel: threading.Event,
    ) -> BaseModel:
        job = self.job_for(workflow, run_id, metadata, input)
        attempt = retry_count + 1
        with self.lock:
            if self.journal.get_job(job.job_id).state == JobState.QUEUED:
                self._record("job", self.journal.set_job_state, job.job_id, JobState.RUNNING)
            self._record("step", self.journal.step_started, job.job_id, step.name, attempt=attempt)
        extra = {"op": "step", "job_id": job.job_id, "run_id": run_id, "step": step.name, "attempt": attempt}
        log.info("step started", extra=extra)
        ctx = LocalStepContext(
            job_id=job.job_id,
            trace_id=job.trace_id,
            step=step.name,
            attempt=attempt,
            config=self.config,
            parents=parents,
            artifacts=self._writer(job),
            job_cancel=cancel,
            attempt_cancel=threading.Event(),
        )
        try:
            try:
                output = step.fn(input, ctx)
            except Skipped as skipped:  # nothing to do: its result stands for the step's output
                result = skipped_output(step, skipped)
                return self._succeeded(job, step, result, run_id, extra, skipped=redact(str(skipped)))
            output = checked_output(step, output)
        except Exception as exc:
            if cancel.is_set():
                raise Cancelled(f"step {step.name} cancelled") from exc
            message, code = describe(exc)
            final = not retryable(exc) or retry_count >= step.retries
            log.warning(
                "step failed" if final else "step attempt failed, the engine retries it",
                extra={**extra, "err": message},
            )
            if final:
                kept = failed_output(exc, step.output)
                self._finish(job, step.name, JobState.FAILED, error=message, code=code, output=kept)
            else:
                self._record(
                    "step",
                    self.journal.step_attempt_failed,
                    job.job_id,
                    step.name,
                    attempt=attempt,
                    error=message,
                )
            raise StepFailure(message, code, retry=retryable(exc)) from exc
        if cancel.is_set():
            raise Cancelled(f"step {step.name} cancelled")
        return self._succeeded(job, step, output, run_id, extra)

    def _succeeded(
        self,
        job: JobRecord,
        step: Step,
        output: BaseModel,
        run_id: str,
        extra: dict[str, Any],
        *,
        skipped: str | None = None,
    ) -> BaseModel:
        """Record the step's result; the job ends when all its steps did (`skipped` when one had
        nothing to do, as on the local engine)."""
        state = JobState.SKIPPED if skipped is not None else JobState.SUCCEEDED
        with self.lock:
            self._record(
                "step",
                self.journal.step_finished,
                job.job_id,
                step.name,
                state,
                output_json=output.model_dump_json(),
                error=skipped,
            )
            states = {s.state for s in self.journal.steps(job.job_id)}
            if (
                states <= {JobState.SUCCEEDED, JobState.SKIPPED}
                and self.journal.get_job(job.job_id).state in ACTIVE
            ):
                final = JobState.SKIPPED if JobState.SKIPPED in states else JobState.SUCCEEDED
                self._record("job", self.journal.set_job_state, job.job_id, final)
                self._writers.pop(job.job_id, None)
                metrics.inc("jobs_completed_total")
                log.info(f"job {final.value}", extra={"op": "job", "job_id": job.job_id, "run_id": run_id})
        log.info(f"step {state.value}", extra=extra)
        return output

    def cancelled(self, workflow: Workflow, step: Step, run_id: str) -> None:
        """The engine cancelled this step's run: record the step and the job cancelled."""
        with self.lock:
            job = self.journal.find_external(ENGINE, run_id)
            if job is None:
                return
            self._finish(
                job, step.name, JobState.CANCELLED, error="cancelled by the engine", code=Cancelled.exit_code
            )
        log.info(
            "step cancelled", extra={"op": "step", "job_id": job.job_id, "run_id": run_id, "step": step.name}
        )

    def _finish(
        self,
        job: JobRecord,
        step: str,
        state: JobState,
        *,
        error: str,
        code: int,
        output: BaseModel | None = None,
    ) -> None:
        """`step` ends in `state` (with the output its error carried, if any); its job ends the same
        way, and its queued steps are skipped."""
        with self.lock:
            self._record(
                "step",
                self.journal.step_finished,
                job.job_id,
                step,
                state,
                output_json=None if output is None else output.model_dump_json(),
                error=error,
                error_code=code,
            )
            for record in self.journal.steps(job.job_id):
                if record.state == JobState.QUEUED:
                    skipped = JobState.CANCELLED if state == JobState.CANCELLED else JobState.SKIPPED
                    self._record("step", self.journal.step_finished, job.job_id, record.name, skipped)
            if self.journal.get_job(job.job_id).state in ACTIVE:
                self._record(
                    "job",
                    self.journal.set_job_state,
                    job.job_id,
                    state,
                    error=f"step {step}: {error}",
                    error_code=code,
                )
                metrics.inc("jobs_failed_total" if state == JobState.FAILED else "jobs_cancelled_total")
            self._writers.pop(job.job_id, None)
