"""What a Hatchet task does on the worker's host, without the SDK: run one step and journal it.

`TaskRuntime.run_step` is called (in a thread, off the worker's event loop) by each compiled task
in win_automation.engines.hatchet.client. It finds or records the job in the local journal
(`engine='hatchet'`, the Hatchet run id as `external_id`; the job id chosen by the trigger travels
in the run's additional metadata, so a trigger on the same host and the worker share one record),
then runs the attempt exactly as the local engine does: `JobMonitor.run_attempt` (the step's own
deadline: a timeout is OperationTimeout, 124, on both engines) and `JobRecorder` (the one state
machine: a failed step skips its dependents, independent branches run, the job ends when every
step has).

Retries are the engine's: a failed attempt raises `StepFailure`, whose `retry` says whether the
engine may try again (a non-transient project error, such as an SSH authentication failure, may
not; the Hatchet boundary turns that into NonRetryableException). The failure travels as text:
`message [exit N]`, so the side that waits for the run can exit with the step's code.

GUI workflows keep the VM's screen (vm.qmp_socket), while the step holds the desktop: before.png
at the first step's first attempt, failure-STEP.png when an attempt fails, after.png when the last
step succeeds.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from win_automation import metrics
from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.engines.context import JobStepContext
from win_automation.engines.desktop import holding_desktop
from win_automation.engines.monitor import JobMonitor
from win_automation.engines.outcome import artifacts_root, describe, retryable
from win_automation.engines.recorder import JobRecorder
from win_automation.errors import Cancelled, Skipped
from win_automation.jobs.ids import is_job_id, new_job_id, new_trace_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.records import JobRecord
from win_automation.jobs.state import JobState
from win_automation.operations import qemu

log = logging.getLogger(__name__)
ENGINE = "hatchet"
MAX_WRITERS = 256
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
    journal: Journal,
    workflow: Workflow,
    input: BaseModel,
    *,
    job_id: str,
    trace_id: str,
    run_id: str,
    artifacts_root: Path | None = None,
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
            artifacts_root=artifacts_root,
        )
    except sqlite3.IntegrityError:
        journal.set_external_id(job_id, run_id)
        return journal.get_job(job_id)
    metrics.inc("jobs_enqueued_total")
    return job


class TaskRuntime:
    """One per worker process: a journal connection (serialised by a lock), the job monitor that
    arms step deadlines, and the job writers."""

    def __init__(self, config: Config, journal: Journal | None = None) -> None:
        self.config = config
        self.journal = journal or Journal.open(config.data.dir)
        self.lock = threading.RLock()
        self.monitor = JobMonitor(config.data.dir)
        self._writers: OrderedDict[str, ArtifactWriter] = OrderedDict()

    def close(self) -> None:
        self.monitor.stop()
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
                artifacts_root=self.config.artifacts.out_dir,
            )

    def _writer(self, workflow: Workflow, job: JobRecord) -> ArtifactWriter:
        with self.lock:
            writer = self._writers.get(job.job_id)
            if writer is None:
                writer = ArtifactWriter(
                    artifacts_root(job, self.config),
                    job.job_id,
                    job.trace_id,
                    job.created_at,
                    types=qemu.writer_types(workflow.artifact_types, workflow.gui),
                )
                self._writers[job.job_id] = writer
                while len(self._writers) > MAX_WRITERS:  # jobs long ended
                    self._writers.popitem(last=False)
            return writer

    def _recorder(self, workflow: Workflow, job: JobRecord) -> _Locked:
        return _Locked(JobRecorder(self.journal, job.job_id, workflow), self.lock)

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
        writer = self._writer(workflow, job)
        recorder = self._recorder(workflow, job)
        recorder.call("attempt_started", step.name, attempt)
        extra = {"op": "step", "job_id": job.job_id, "run_id": run_id, "step": step.name, "attempt": attempt}
        log.info("step started", extra=extra)
        attempt_cancel = threading.Event()
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
        )
        try:
            with holding_desktop(self.config, workflow, job.job_id, cancel.is_set):
                if workflow.gui and attempt == 1 and step is workflow.steps[0]:
                    qemu.keep_screen(self.config, writer, "before.png")
                error, value = self.monitor.run_attempt(step, input, ctx, cancel, attempt_cancel)
                if workflow.gui:
                    self._keep_screen_after(workflow, step, writer, error)
        except Cancelled as waiting:  # cancelled while waiting for the desktop
            error, value = waiting, None
        if isinstance(error, Cancelled):
            recorder.call("end", JobState.CANCELLED, str(error), Cancelled.exit_code)
            raise error
        may_retry = retry_count < step.retries
        try:
            output: BaseModel = recorder.call(
                "record_attempt", step, attempt, error, value, may_retry=may_retry
            )
        except Skipped as skipped:
            log.info("step skipped", extra=extra)
            return skipped.result  # type: ignore[no-any-return]
        except Exception as exc:
            message, code = describe(exc)
            final = not (may_retry and retryable(exc))
            log.warning(
                "step failed" if final else "step attempt failed, the engine retries it",
                extra={**extra, "err": message},
            )
            raise StepFailure(message, code, retry=retryable(exc)) from exc
        log.info("step succeeded", extra=extra)
        return output

    def _keep_screen_after(
        self, workflow: Workflow, step: Step, writer: ArtifactWriter, error: BaseException | None
    ) -> None:
        """A GUI step's screen, still holding the desktop: failure-STEP.png when the attempt failed
        (the last attempt's stays), after.png when the last step succeeded."""
        if error is not None and not isinstance(error, Cancelled | Skipped):
            qemu.keep_screen(self.config, writer, f"failure-{step.name}.png")
        elif error is None and step is workflow.steps[-1]:
            qemu.keep_screen(self.config, writer, "after.png")

    def cancelled(self, workflow: Workflow, step: Step, run_id: str) -> None:
        """The engine cancelled this step's run: record the job (and its unfinished steps) cancelled."""
        with self.lock:
            job = self.journal.find_external(ENGINE, run_id)
        if job is None:
            return
        self._recorder(workflow, job).call(
            "end", JobState.CANCELLED, "cancelled by the engine", Cancelled.exit_code
        )
        log.info(
            "step cancelled", extra={"op": "step", "job_id": job.job_id, "run_id": run_id, "step": step.name}
        )


class _Locked:
    """A recorder whose calls hold the runtime's lock (its journal connection is shared by threads)."""

    def __init__(self, recorder: JobRecorder, lock: threading.RLock) -> None:
        self.recorder = recorder
        self.lock = lock

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return getattr(self.recorder, method)(*args, **kwargs)
