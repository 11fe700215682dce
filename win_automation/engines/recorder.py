"""The one job and step state machine that both engines record through.

`JobRecorder` turns what happens to a job into journal rows: the local engine calls it as it runs
steps, the Hatchet worker as its tasks run, and the Hatchet trigger side as it reads a finished
run. Each semantic is decided here, once:

- An attempt starts (`attempt_started`), fails and will be retried (`attempt_failed`), or ends the
  step: `succeeded`, `skipped` (errors.Skipped: nothing to do; its result stands for the output)
  or `failed`. A failed step skips its dependents (every step downstream of it); independent
  branches still run.
- The job ends when every step has ended: `failed` (the first failed step's error and exit code),
  else `skipped` when a step had nothing to do, else `succeeded`. `end(state)` ends it at once:
  cancelled, interrupted (Ctrl-C, SIGTERM), or failed when the engine itself broke.
- Recording is idempotent: a step or job that has already ended is left as it is (another
  process, such as the worker on this host, recorded it first), so the two sides of a Hatchet
  job never race into an illegal transition.
- `epoch` fences the owner: an owner whose job was taken over (marked interrupted while it was
  paused, then resumed elsewhere) gets errors.Superseded at its next write and records nothing.

Metrics (`jobs_*_total`) and the `job <state>` log line are emitted here when a job ends.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from win_automation import metrics
from win_automation.definition import Step, Workflow
from win_automation.engines.outcome import describe, failed_output, retryable, skipped_output
from win_automation.errors import Cancelled, Skipped
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState
from win_automation.log import redact

log = logging.getLogger(__name__)

_ENDED_METRIC = {
    JobState.SUCCEEDED: "jobs_completed_total",
    JobState.SKIPPED: "jobs_completed_total",
    JobState.FAILED: "jobs_failed_total",
    JobState.CANCELLED: "jobs_cancelled_total",
}


class JobRecorder:
    """Records one job of `workflow` in `journal`; `epoch` is the ownership the caller holds
    (None: no fence, as for Hatchet jobs, which the engine owns)."""

    def __init__(
        self, journal: Journal, job_id: str, workflow: Workflow, *, epoch: int | None = None
    ) -> None:
        self.journal = journal
        self.job_id = job_id
        self.workflow = workflow
        self.epoch = epoch
        self.ended: JobState | None = None
        """The state this recorder ended the job in (None: not ended by it)."""
        self.parent_failed: set[str] = set()
        """Steps downstream of a step this recorder recorded failed: skipped, not to be run."""
        self._started = False  # the job has left `queued` (it never goes back under this epoch)

    def running(self) -> None:
        """The job starts running (a no-op when it already is). Asked of the journal once per
        recorder: a job that has left `queued` goes back only through a resume, which changes the
        epoch (and so fails this recorder's next write with Superseded)."""
        if not self._started:
            self.journal.start_job(self.job_id, epoch=self.epoch)
            self._started = True

    def attempt_started(self, step: str, attempt: int) -> None:
        self.running()
        self.journal.step_started(self.job_id, step, attempt=attempt, epoch=self.epoch)

    def attempt_failed(self, step: str, attempt: int, message: str) -> None:
        self.journal.step_attempt_failed(self.job_id, step, attempt=attempt, error=message, epoch=self.epoch)
        log.warning(
            "step attempt failed, retrying",
            extra={"op": "step", "job_id": self.job_id, "step": step, "attempt": attempt, "err": message},
        )

    def succeeded(self, step: str, output: BaseModel) -> JobState | None:
        return self._finish(step, JobState.SUCCEEDED, output_json=output.model_dump_json())

    def skipped(self, step: str, output: BaseModel, reason: str) -> JobState | None:
        return self._finish(
            step, JobState.SKIPPED, output_json=output.model_dump_json(), error=redact(reason)
        )

    def failed(self, step: str, message: str, code: int, output: BaseModel | None = None) -> JobState | None:
        """`step` failed for good: its dependents are skipped; the job ends once nothing runs."""
        descendants = self.workflow.descendants(step)
        ended = self._finish(
            step,
            JobState.FAILED,
            output_json=None if output is None else output.model_dump_json(),
            error=message,
            error_code=code,
            skip=descendants,
        )
        self.parent_failed.update(descendants)
        return ended

    def _finish(self, step: str, state: JobState, **kwargs: object) -> JobState | None:
        """Record the step's end and, in the same transaction, the job's when it was the last."""
        return self._ended(
            self.journal.step_ended(self.job_id, step, state, epoch=self.epoch, **kwargs)  # type: ignore[arg-type]
        )

    def end_if_done(self) -> JobState | None:
        """End the job when every step has ended; its final state, or None."""
        return self._ended(self.journal.end_job(self.job_id, epoch=self.epoch))

    def end(self, state: JobState, error: str | None = None, code: int | None = None) -> JobState | None:
        """End the job now (cancelled, interrupted, or failed because the engine broke)."""
        return self._ended(
            self.journal.end_job(self.job_id, state, error=error, error_code=code, epoch=self.epoch)
        )

    def _ended(self, state: JobState | None) -> JobState | None:
        if state is not None:
            self.ended = state
            if state in _ENDED_METRIC:
                metrics.inc(_ENDED_METRIC[state])
            log.info(
                f"job {state.value}",
                extra={"op": "job", "job_id": self.job_id, "workflow": self.workflow.name},
            )
        return state

    def record_attempt(
        self, step: Step, attempt: int, error: BaseException | None, value: object, *, may_retry: bool
    ) -> BaseModel:
        """Record how an attempt of `step` ended and return its output, or raise: Skipped (recorded
        skipped), Cancelled (nothing recorded: the caller ends the job), or the step's error
        (recorded failed, or as a failed attempt when `may_retry` and it is retryable)."""
        if error is None:
            if not isinstance(value, step.output):
                error = TypeError(
                    f"step {step.name} returned {type(value).__name__}, not {step.output.__name__}"
                )
            else:
                self.succeeded(step.name, value)
                return value
        if isinstance(error, Skipped):
            try:
                result = skipped_output(step, error)
            except TypeError as exc:
                error = exc
            else:
                self.skipped(step.name, result, str(error))
                raise error
        if isinstance(error, Cancelled):
            raise error
        message, code = describe(error)
        if may_retry and retryable(error):
            self.attempt_failed(step.name, attempt, message)
        else:
            self.failed(step.name, message, code, failed_output(error, step.output))
        raise error
