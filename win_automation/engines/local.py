"""The embedded local engine: runs a Workflow's DAG in the calling process, journaling everything.

    engine = LocalEngine(config)                 # opens the journal in config.data.dir
    outcome = engine.run(workflow, workflow.parse_input('{"message": "hi"}'))
    outcome = engine.resume(job_id, all_workflows())
    engine.close()

- Steps run one at a time in definition order (which is a topological order of the DAG). A step
  whose parent failed or was skipped is `skipped`; independent branches still run.
- Each attempt runs in the calling thread (no thread hand-off: a 3-step job costs ~2 ms). Its
  `timeout_seconds` and a cancel reach the step the way Hatchet delivers them to a sync task:
  `ctx.cancelled()` turns true (the JobMonitor trips it), and steps check it at safe points; the
  SSH and HTTP layers enforce their own deadlines. An attempt that ends after its deadline is a
  timeout (OperationTimeout, transient). Retries: up to `retries` more attempts with backoff
  `backoff_seconds * 2**(attempt-1)`, for transient project errors and for unexpected exceptions;
  a non-transient WinAutomationError fails the step at once (what Hatchet's NonRetryable does).
- Every state change (job, step, attempt) is written to the journal as it happens, with the
  step's output as JSON; `resume` revalidates finished steps' outputs into their models and runs
  only the unfinished steps.
- Cancel: `jobs cancel` sets a flag in the journal; the JobMonitor sees it within ~0.1 s, the
  running step's `ctx.cancelled()` turns true, and the job is recorded `cancelled` when the step
  returns, before any further step starts.
- Ctrl-C (KeyboardInterrupt, also inside a step) records the job `interrupted` (resumable) and
  raises Cancelled (exit 130); kill -9 leaves it to the next `Journal.open` to do the same.
- GUI workflows (`Workflow.gui`) hold the per-VM desktop lock (win_automation.jobs.locks) while they
  run; the VM is `ssh.host:ssh.port`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from win_automation import metrics
from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.engines.context import JobMonitor, LocalStepContext
from win_automation.engines.outcome import JobOutcome as JobOutcome  # re-exported for Hatchet
from win_automation.engines.outcome import checked_output, failed_output, skipped_output
from win_automation.engines.outcome import describe as describe
from win_automation.engines.outcome import retryable as retryable
from win_automation.errors import (
    Cancelled,
    NotFoundError,
    OperationTimeout,
    Skipped,
    UsageError,
)
from win_automation.jobs.ids import validate_job_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.locks import vm_lock
from win_automation.jobs.records import JobRecord
from win_automation.jobs.state import RESUMABLE, JobState
from win_automation.log import redact

log = logging.getLogger(__name__)


class _JobCancelled(Exception):
    pass


class LocalEngine:
    """Runs workflows in this process; one per process is enough (it is thread-safe per job)."""

    name = "local"

    def __init__(self, config: Config, *, journal: Journal | None = None, poll: float = 0.1) -> None:
        self.config = config
        self.journal = journal or Journal.open(config.data.dir)
        self._monitor = JobMonitor(config.data.dir, poll=poll)

    def close(self) -> None:
        self._monitor.stop()
        self.journal.close()

    def run(self, workflow: Workflow, input: BaseModel, *, job_id: str | None = None) -> JobOutcome:
        """Record a new job for `workflow` and run it to its end."""
        if not isinstance(input, workflow.input):
            raise UsageError(f"input of {workflow.name} must be {workflow.input.__name__}")
        job = self.journal.create_job(
            workflow.name,
            input.model_dump_json(),
            steps=[s.name for s in workflow.steps],
            engine=self.name,
            job_id=job_id,
        )
        metrics.inc("jobs_enqueued_total")
        log.info("job queued", extra={"op": "run", "job_id": job.job_id, "workflow": workflow.name})
        return self._execute(job, workflow, input, {}, [])

    def resume(self, job_id: str, workflows: Mapping[str, Workflow] | Workflow) -> JobOutcome:
        """Continue a failed or interrupted job from its first unfinished step."""
        validate_job_id(job_id)
        job = self.journal.get_job(job_id)
        catalog = {workflows.name: workflows} if isinstance(workflows, Workflow) else workflows
        workflow = catalog.get(job.workflow)
        if workflow is None:
            raise NotFoundError(f"job {job_id}: its workflow {job.workflow!r} is not defined here")
        if job.engine != self.name:
            raise UsageError(
                f"job {job_id} ran on the {job.engine} engine; the local engine cannot resume it"
            )
        if job.state not in RESUMABLE:
            raise UsageError(f"job {job_id} is {job.state.value}; only failed or interrupted jobs resume")
        input = workflow.input.model_validate_json(job.input_json)
        done: dict[str, BaseModel] = {}
        skipped: list[str] = []
        for record in self.journal.steps(job_id):
            if record.state in (JobState.SUCCEEDED, JobState.SKIPPED) and record.output_json is not None:
                try:
                    done[record.name] = workflow.step(record.name).output.model_validate_json(
                        record.output_json
                    )
                    if record.state == JobState.SKIPPED:
                        skipped.append(record.name)
                except (ValidationError, StopIteration):
                    continue  # the definition changed: run the step again
        job = self.journal.requeue(job_id)
        log.info("job resumed", extra={"op": "resume", "job_id": job_id, "finished_steps": len(done)})
        return self._execute(job, workflow, input, done, skipped)

    # -- execution -------------------------------------------------------------------------

    def _execute(
        self,
        job: JobRecord,
        workflow: Workflow,
        input: BaseModel,
        done: dict[str, BaseModel],
        skipped: list[str],
    ) -> JobOutcome:
        cancel = self._monitor.watch(job.job_id)
        outcome = JobOutcome(job.job_id, job.trace_id, workflow.name, JobState.RUNNING, dict(done))
        outcome.skipped = list(skipped)
        writer = ArtifactWriter(self.config.artifacts.out_dir, job.job_id, job.trace_id, job.created_at)
        try:
            if workflow.gui:
                vm = f"{self.config.ssh.host}:{self.config.ssh.port}"
                with vm_lock(
                    self.config.data.dir,
                    vm,
                    cancelled=lambda: cancel.is_set() or self.journal.cancel_requested(job.job_id),
                    on_wait=lambda: log.info(
                        "waiting for the VM desktop", extra={"op": "lock", "job_id": job.job_id, "vm": vm}
                    ),
                ):
                    self._run_steps(job, workflow, input, outcome, writer, cancel)
            else:
                self._run_steps(job, workflow, input, outcome, writer, cancel)
        except (Cancelled, _JobCancelled) as exc:
            self._finish_cancelled(
                job.job_id, workflow, outcome, str(exc) if isinstance(exc, Cancelled) else None
            )
        except KeyboardInterrupt:
            self._finish_unfinished(job.job_id, workflow, outcome, JobState.INTERRUPTED)
            self.journal.set_job_state(
                job.job_id, JobState.INTERRUPTED, error="interrupted (Ctrl-C or SIGTERM)"
            )
            raise Cancelled(
                f"job {job.job_id} interrupted; continue it with `win-automation jobs resume {job.job_id}`"
            ) from None
        except Exception as exc:
            self._finish_broken(job.job_id, workflow, outcome, exc)
            raise
        finally:
            self._monitor.unwatch(job.job_id)
        return outcome

    def _run_steps(
        self,
        job: JobRecord,
        workflow: Workflow,
        input: BaseModel,
        outcome: JobOutcome,
        writer: ArtifactWriter,
        cancel: threading.Event,
    ) -> None:
        if cancel.is_set():
            raise _JobCancelled
        self.journal.set_job_state(job.job_id, JobState.RUNNING)
        blocked: set[str] = set()
        for step in workflow.steps:
            if step.name in outcome.outputs:
                continue
            if cancel.is_set():
                raise _JobCancelled
            if any(parent in blocked for parent in step.parents):
                blocked.add(step.name)
                self.journal.step_finished(
                    job.job_id, step.name, JobState.SKIPPED, error="a parent step failed"
                )
                continue
            parents = {p: outcome.outputs[p] for p in step.parents}
            try:
                output = self._run_step(job, step, input, parents, writer, cancel)
            except Skipped as skipped:
                outcome.outputs[step.name] = skipped.result
                outcome.skipped.append(step.name)
                continue
            except (Cancelled, _JobCancelled):
                raise
            except Exception as exc:
                message, code = describe(exc)
                blocked.add(step.name)
                if (kept := failed_output(exc, step.output)) is not None:
                    outcome.outputs[step.name] = kept
                if outcome.error is None:
                    outcome.error, outcome.error_code = f"step {step.name}: {message}", code
                continue
            outcome.outputs[step.name] = output
        if outcome.error is not None:
            outcome.state = JobState.FAILED
            self.journal.set_job_state(
                job.job_id, JobState.FAILED, error=outcome.error, error_code=outcome.error_code
            )
            metrics.inc("jobs_failed_total")
        elif outcome.skipped:
            outcome.state = JobState.SKIPPED
            self.journal.set_job_state(job.job_id, JobState.SKIPPED)
            metrics.inc("jobs_completed_total")
        else:
            outcome.state = JobState.SUCCEEDED
            self.journal.set_job_state(job.job_id, JobState.SUCCEEDED)
            metrics.inc("jobs_completed_total")
        log.info(
            f"job {outcome.state.value}",
            extra={"op": "run", "job_id": job.job_id, "workflow": workflow.name, "err": outcome.error},
        )

    def _run_step(
        self,
        job: JobRecord,
        step: Step,
        input: BaseModel,
        parents: dict[str, BaseModel],
        writer: ArtifactWriter,
        cancel: threading.Event,
    ) -> BaseModel:
        attempts = step.retries + 1
        for attempt in range(1, attempts + 1):
            self.journal.step_started(job.job_id, step.name, attempt=attempt)
            attempt_cancel = threading.Event()
            ctx = LocalStepContext(
                job_id=job.job_id,
                trace_id=job.trace_id,
                step=step.name,
                attempt=attempt,
                config=self.config,
                parents=parents,
                artifacts=writer,
                job_cancel=cancel,
                attempt_cancel=attempt_cancel,
            )
            try:
                output = self._attempt(step, input, ctx, cancel, attempt_cancel)
            except Skipped as skipped:
                try:
                    result = skipped_output(step, skipped)
                except TypeError as exc:
                    self.journal.step_finished(
                        job.job_id, step.name, JobState.FAILED, error=str(exc), error_code=1
                    )
                    raise exc from None
                self.journal.step_finished(
                    job.job_id,
                    step.name,
                    JobState.SKIPPED,
                    output_json=result.model_dump_json(),
                    error=redact(str(skipped)),
                )
                raise
            except (Cancelled, _JobCancelled):
                raise
            except Exception as exc:
                message, code = describe(exc)
                last = attempt == attempts or not retryable(exc)
                if last:
                    kept = failed_output(exc, step.output)
                    self.journal.step_finished(
                        job.job_id,
                        step.name,
                        JobState.FAILED,
                        output_json=None if kept is None else kept.model_dump_json(),
                        error=message,
                        error_code=code,
                    )
                    raise
                self.journal.step_attempt_failed(job.job_id, step.name, attempt=attempt, error=message)
                log.warning(
                    "step attempt failed, retrying",
                    extra={
                        "op": "step",
                        "job_id": job.job_id,
                        "step": step.name,
                        "attempt": attempt,
                        "err": message,
                    },
                )
                if cancel.wait(step.backoff_seconds * 2 ** (attempt - 1)):
                    raise _JobCancelled from None
                continue
            self.journal.step_finished(
                job.job_id, step.name, JobState.SUCCEEDED, output_json=output.model_dump_json()
            )
            return output
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self,
        step: Step,
        input: BaseModel,
        ctx: LocalStepContext,
        cancel: threading.Event,
        attempt_cancel: threading.Event,
    ) -> BaseModel:
        """Run one attempt in this thread. The monitor turns `ctx.cancelled()` true when the job is
        cancelled or the step's deadline passes; an attempt that ends after its deadline, however
        it ends, is a timeout (OperationTimeout, transient: retried)."""
        deadline = time.monotonic() + step.timeout_seconds
        self._monitor.arm(ctx.job_id, deadline, attempt_cancel)
        error: Exception | None = None
        try:
            value = step.fn(input, ctx)
        except Exception as exc:
            error = exc
        finally:
            self._monitor.disarm(ctx.job_id)
        if cancel.is_set():
            raise _JobCancelled
        if attempt_cancel.is_set() or time.monotonic() > deadline:
            raise OperationTimeout(
                f"step {step.name} passed its timeout of {step.timeout_seconds:g}s"
            ) from error
        if error is not None:
            raise error
        return checked_output(step, value)

    def _finish_unfinished(
        self, job_id: str, workflow: Workflow, outcome: JobOutcome, state: JobState
    ) -> None:
        for record in self.journal.steps(job_id):
            if record.state in (JobState.QUEUED, JobState.RUNNING):
                self.journal.step_finished(job_id, record.name, state)
        outcome.state = state

    def _finish_cancelled(
        self, job_id: str, workflow: Workflow, outcome: JobOutcome, message: str | None
    ) -> None:
        self._finish_unfinished(job_id, workflow, outcome, JobState.CANCELLED)
        outcome.error = message or "cancelled by request"
        outcome.error_code = Cancelled.exit_code
        self.journal.set_job_state(
            job_id, JobState.CANCELLED, error=outcome.error, error_code=Cancelled.exit_code
        )
        metrics.inc("jobs_cancelled_total")
        log.info("job cancelled", extra={"op": "run", "job_id": job_id})

    def _finish_broken(self, job_id: str, workflow: Workflow, outcome: JobOutcome, exc: Exception) -> None:
        """The engine itself failed (the journal, the desktop lock): record the job failed (or
        interrupted, when it had not started) if the journal still answers; otherwise the next
        Journal.open marks it interrupted."""
        message, code = describe(exc)
        outcome.error, outcome.error_code = f"engine: {message}", code
        try:
            current = self.journal.get_job(job_id).state
            final = JobState.FAILED if current == JobState.RUNNING else JobState.INTERRUPTED
            if current in (JobState.QUEUED, JobState.RUNNING):
                for record in self.journal.steps(job_id):
                    if record.state == JobState.RUNNING:
                        self.journal.step_finished(job_id, record.name, JobState.FAILED, error=outcome.error)
                    elif record.state == JobState.QUEUED and final == JobState.FAILED:
                        self.journal.step_finished(job_id, record.name, JobState.SKIPPED)
                self.journal.set_job_state(job_id, final, error=outcome.error, error_code=code)
                outcome.state = final
        except Exception:
            log.warning(
                "could not record the engine failure", exc_info=True, extra={"op": "run", "job_id": job_id}
            )
