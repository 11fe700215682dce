"""The embedded local engine: runs a Workflow's DAG in the calling process, journaling everything.

    engine = LocalEngine(config)                 # opens the journal in config.data.dir
    outcome = engine.run(workflow, workflow.parse_input('{"message": "hi"}'))
    outcome = engine.resume(job_id, all_workflows())
    engine.close()

- Steps run one at a time in definition order (which is a topological order of the DAG). Every
  state change goes through engines.recorder.JobRecorder, the state machine the Hatchet worker
  uses too: a failed step skips its dependents; independent branches still run.
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
  run; the VM is `ssh.host:ssh.port`. With vm.qmp_socket set, their artifacts keep the screen
  (type `screen`): before.png, after.png, and failure-STEP.png when a step fails. A job started
  from a snapshot (`run --from-snapshot`) loads it under the same lock before its first step; a
  load that fails ends the job `failed` (SNAPSHOT_NOT_LOADED), and `resume` refuses it: the
  journal does not keep the snapshot, and a resume would run the steps on whatever the VM holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from win_automation import log as log_lines
from win_automation import metrics
from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.engines.context import JobStepContext
from win_automation.engines.desktop import holding_desktop
from win_automation.engines.live_output import LiveOutput
from win_automation.engines.monitor import JobMonitor
from win_automation.engines.outcome import (
    JobOutcome,
    artifacts_root,
    describe,
    failed_output,
    outcome_of,
    retryable,
)
from win_automation.engines.recorder import JobRecorder
from win_automation.errors import (
    Cancelled,
    JournalBusy,
    JournalError,
    NotFoundError,
    Skipped,
    Superseded,
    UsageError,
)
from win_automation.jobs.ids import validate_job_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.records import JobRecord
from win_automation.jobs.state import RESUMABLE, JobState
from win_automation.operations import qemu
from win_automation.operations.vm import Emit

log = logging.getLogger(__name__)
SNAPSHOT_NOT_LOADED = "snapshot not loaded"
"""How the error of a job whose --from-snapshot load failed begins: `resume` refuses such a job."""


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

    def run(
        self,
        workflow: Workflow,
        input: BaseModel,
        *,
        job_id: str | None = None,
        emit: Emit | None = None,
        snapshot: str | None = None,
    ) -> JobOutcome:
        """Record a new job for `workflow` and run it to its end; `emit(stream, text)` gets the
        steps' live output; `snapshot` is loaded into the VM (QMP) before the first step."""
        if not isinstance(input, workflow.input):
            raise UsageError(f"input of {workflow.name} must be {workflow.input.__name__}")
        job = self.journal.create_job(
            workflow.name,
            input.model_dump_json(),
            steps=[s.name for s in workflow.steps],
            engine=self.name,
            job_id=job_id,
            artifacts_root=self.config.artifacts.out_dir,
        )
        metrics.inc("jobs_enqueued_total")
        log.info("job queued", extra={"op": "run", "job_id": job.job_id, "workflow": workflow.name})
        return self._execute(job, workflow, input, {}, emit, snapshot)

    def resume(
        self, job_id: str, workflows: Mapping[str, Workflow] | Workflow, *, emit: Emit | None = None
    ) -> JobOutcome:
        """Continue a failed or interrupted job from its first unfinished step; also one whose
        owner on this host is alive but silent past the heartbeat expiry (stopped): taken over."""
        validate_job_id(job_id)
        self.journal.recover_interrupted(take_over=job_id)
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
        if (job.error or "").startswith(SNAPSHOT_NOT_LOADED):
            raise UsageError(
                f"job {job_id}: its snapshot was not loaded (see `win-automation jobs show {job_id}`)"
                f" and a resume would not load it: run it again (`win-automation run {job.workflow}"
                " --from-snapshot NAME`)"
            )
        input = workflow.input.model_validate_json(job.input_json)
        done: dict[str, BaseModel] = {}
        for record in self.journal.steps(job_id):
            if record.state in (JobState.SUCCEEDED, JobState.SKIPPED) and record.output_json is not None:
                try:
                    done[record.name] = workflow.step(record.name).output.model_validate_json(
                        record.output_json
                    )
                except (ValidationError, StopIteration):
                    continue  # the definition changed: run the step again
        job = self.journal.requeue(job_id)
        log.info("job resumed", extra={"op": "resume", "job_id": job_id, "finished_steps": len(done)})
        return self._execute(job, workflow, input, done, emit)

    # -- execution -------------------------------------------------------------------------

    def _execute(
        self,
        job: JobRecord,
        workflow: Workflow,
        input: BaseModel,
        done: dict[str, BaseModel],
        emit: Emit | None,
        snapshot: str | None = None,
    ) -> JobOutcome:
        recorder = JobRecorder(self.journal, job.job_id, workflow, epoch=job.epoch)
        cancel = self._monitor.watch(job.job_id, job.epoch)
        output = None if emit is None else LiveOutput(emit, cancel)
        writer = ArtifactWriter(
            artifacts_root(job, self.config),
            job.job_id,
            job.trace_id,
            job.created_at,
            types=qemu.writer_types(workflow.artifact_types, workflow.gui),
        )
        outputs = dict(done)
        interrupted = False
        if output is not None:
            log_lines.divert(output.log_line)  # the CLI's log lines share its stderr
        try:
            cancelled = lambda: cancel.is_set() or self.journal.cancel_requested(job.job_id)  # noqa: E731
            with holding_desktop(self.config, workflow, job.job_id, cancelled, always=snapshot is not None):
                self._prepare_desktop(workflow, job.job_id, writer, snapshot, recorder)
                self._run_steps(job, workflow, input, outputs, writer, cancel, recorder, output)
                if workflow.gui:
                    qemu.keep_screen(self.config, writer, "after.png")
        except Superseded:
            log.warning(
                "job taken over by another process; stopped", extra={"op": "run", "job_id": job.job_id}
            )
            raise
        except Cancelled as exc:
            if output is not None and output.failed is not None:
                recorder.end(JobState.FAILED, output.describe(), output.exit_code())
            else:
                recorder.end(JobState.CANCELLED, str(exc), Cancelled.exit_code)
        except KeyboardInterrupt:
            interrupted = True
            recorder.end(JobState.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)")
            raise Cancelled(
                f"job {job.job_id} interrupted; continue it with `win-automation jobs resume {job.job_id}`"
            ) from None
        except Exception as exc:
            self._broken(recorder, exc)
            raise
        finally:
            self._monitor.unwatch(job.job_id)
            if output is not None:  # the job is recorded: now wait for the reader
                try:
                    output.close(discard=interrupted)
                finally:
                    log_lines.divert(None)
        if output is not None and output.failed is not None:
            raise output.failed  # the caller's own output error, for its exit code (app.main)
        return outcome_of(self.journal, workflow, job.job_id, outputs, self.config.artifacts.out_dir)

    def _prepare_desktop(
        self,
        workflow: Workflow,
        job_id: str,
        writer: ArtifactWriter,
        snapshot: str | None,
        recorder: JobRecorder,
    ) -> None:
        """With the desktop held: load the snapshot the job starts from (a failure ends the job
        `failed`, not resumable: SNAPSHOT_NOT_LOADED); keep the screen as before.png for a GUI job
        (when vm.qmp_socket is set)."""
        if snapshot is not None:
            log.info("loading snapshot", extra={"op": "snapshot", "job_id": job_id, "snapshot": snapshot})
            try:
                qemu.Qemu(self.config).snapshot_load(snapshot)
            except Exception as exc:
                message, code = describe(exc)
                recorder.running()  # queued cannot end failed; the caller's _broken then finds it ended
                recorder.end(JobState.FAILED, f"{SNAPSHOT_NOT_LOADED} {snapshot!r}: {message}", code)
                raise
        if workflow.gui:
            qemu.keep_screen(self.config, writer, "before.png")

    def _run_steps(
        self,
        job: JobRecord,
        workflow: Workflow,
        input: BaseModel,
        outputs: dict[str, BaseModel],
        writer: ArtifactWriter,
        cancel: threading.Event,
        recorder: JobRecorder,
        emit: LiveOutput | None,
    ) -> None:
        if cancel.is_set():
            raise _StepCancelled("cancelled before it started")
        recorder.running()
        for step in workflow.steps:
            if step.name in outputs:
                continue
            if cancel.is_set():
                raise _StepCancelled("cancelled")
            if step.name in recorder.parent_failed:
                continue  # recorded skipped when its parent failed (this process is the job's only writer)
            parents = {p: outputs[p] for p in step.parents}
            try:
                outputs[step.name] = self._run_step(job, step, input, parents, writer, cancel, recorder, emit)
            except Skipped as skipped:
                outputs[step.name] = skipped.result
            except (Cancelled, JournalError):
                # a step's end the journal refused (locked, a full or read-only disk): the
                # engine's failure, not the step's; its dependents, never told to skip, must not
                # run, and the job must not be read back as if it had ended
                raise
            except Exception as exc:
                if workflow.gui:  # the screen at the moment of failure
                    qemu.keep_screen(self.config, writer, f"failure-{step.name}.png")
                if (kept := failed_output(exc, step.output)) is not None:
                    outputs[step.name] = kept
        if recorder.ended is None:  # e.g. a resumed job whose steps had all finished
            recorder.end_if_done()

    def _run_step(
        self,
        job: JobRecord,
        step: Step,
        input: BaseModel,
        parents: dict[str, BaseModel],
        writer: ArtifactWriter,
        cancel: threading.Event,
        recorder: JobRecorder,
        emit: LiveOutput | None,
    ) -> BaseModel:
        attempts = step.retries + 1
        for attempt in range(1, attempts + 1):
            recorder.attempt_started(step.name, attempt)
            attempt_cancel = threading.Event()
            if emit is not None:  # its writes wait for a slow reader only until this deadline
                emit.attempt = attempt_cancel
            ctx = JobStepContext(
                job_id=job.job_id,
                trace_id=job.trace_id,
                step=step.name,
                attempt=attempt,
                config=self.config,
                parents=parents,
                artifacts=writer,
                job_cancel=cancel,
                attempt_cancel=attempt_cancel,
                emit=emit,
            )
            error, value = self._monitor.run_attempt(step, input, ctx, cancel, attempt_cancel)
            if isinstance(error, Cancelled):
                raise _StepCancelled(str(error)) from error
            try:
                return recorder.record_attempt(step, attempt, error, value, may_retry=attempt < attempts)
            except Exception as exc:
                if attempt == attempts or not retryable(exc) or isinstance(exc, Skipped):
                    raise
            if cancel.wait(step.backoff_seconds * 2 ** (attempt - 1)):
                raise _StepCancelled("cancelled while waiting to retry")
        raise AssertionError("unreachable")  # pragma: no cover

    def _broken(self, recorder: JobRecorder, exc: Exception) -> None:
        """The engine itself failed (the journal, the desktop lock): record the job failed (or
        interrupted, when it had not started) if the journal still answers; otherwise the next
        Journal.open marks it interrupted. A journal that stayed locked for the whole busy
        timeout is not asked again: the command would hang a second timeout for nothing."""
        message, code = describe(exc)
        if isinstance(exc, JournalBusy):
            log.info(
                "journal locked; the job's end is left to the next open",
                extra={"op": "run", "job_id": recorder.job_id},
            )
            return
        try:
            started = self.journal.get_job(recorder.job_id).state == JobState.RUNNING
            state = JobState.FAILED if started else JobState.INTERRUPTED
            recorder.end(state, f"engine: {message}", code)
        except Exception as failure:
            # still locked, full or read-only: the CLI's error line says so; the next
            # Journal.open marks the job interrupted, as its owner has exited by then
            level = logging.INFO if isinstance(failure, JournalError) else logging.WARNING
            log.log(
                level,
                "could not record the engine failure",
                exc_info=True,
                extra={"op": "run", "job_id": recorder.job_id},
            )


class _StepCancelled(Cancelled):
    """The job was cancelled by request while (or before) a step ran."""
