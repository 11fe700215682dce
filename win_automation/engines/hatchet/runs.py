"""The triggering side of a job command on Hatchet: `HatchetRuns` triggers a run (the job id,
trace id and VM travel in its additional metadata), follows its tasks, waits for the end and
cancels it; each run is recorded in the local journal with `engine='hatchet'` and the run id as
`external_id`.

It calls the engine's RPCs itself (TriggerWorkflow, GetRunDetails, CancelTasks), each with
`hatchet.request_timeout` as its deadline, where the SDK's calls have none and retry (3 x ~70 s
on a stalled engine): a trigger is sent once (again only when it never left), and a run whose
engine stops answering is given up on. An answer it cannot use (a status this version does not
know on a finished run, a step's output not JSON or not its model, a task the workflow lacks, a run
COMPLETED without a step's output) is ServiceRefused naming the run and the problem; the job stays
as last recorded. A status it does not know on an unfinished run (EVICTED) is not finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from hatchet_sdk.connection import new_conn
from hatchet_sdk.contracts.v1 import workflows_pb2 as admin_pb2
from hatchet_sdk.contracts.v1.workflows_pb2_grpc import AdminServiceStub
from hatchet_sdk.contracts.workflows_pb2 import TriggerWorkflowRequest
from hatchet_sdk.contracts.workflows_pb2_grpc import WorkflowServiceStub
from hatchet_sdk.utils.api_auth import create_authorization_header
from pydantic import BaseModel, ValidationError

from win_automation.artifacts.store import job_folder
from win_automation.config import Config
from win_automation.definition import Workflow
from win_automation.engines.hatchet.rpc import client_config, translate
from win_automation.engines.hatchet.runtime import parse_failure, record_job
from win_automation.engines.outcome import JobOutcome, artifacts_root
from win_automation.engines.recorder import JobRecorder
from win_automation.errors import Cancelled, ConnectError, IllegalTransition, ServiceRefused, UsageError
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25
RETRY_PAUSE = 0.5  # between triggers that never reached the engine
# a call that may have reached the engine: its trigger is not sent again (it would run twice)
_UNKNOWN_OUTCOME = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
NO_WORKER_HINT_SECONDS = 10.0
_STATES = {
    "QUEUED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
}


@dataclass(frozen=True)
class TaskView:
    status: str  # QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, or one unknown here (EVICTED, "77")
    output: BaseModel | None  # a COMPLETED task's, as its step's output model
    error: str | None


@dataclass(frozen=True)
class RunView:
    """A run as GetRunDetails tells it."""

    run_id: str
    status: str
    done: bool
    tasks: dict[str, TaskView]

    @property
    def finished(self) -> bool:
        return self.done or self.status in ("COMPLETED", "FAILED", "CANCELLED")


def _status(value: int) -> str:
    """The status's name; one the SDK's protos do not know (a newer engine's) as its number."""
    try:
        return str(admin_pb2.RunStatus.Name(value))
    except ValueError:
        return str(value)


def _not_sent(exc: grpc.RpcError) -> bool:
    """The call failed before its request left (no connection to the engine): safe to send again."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "")


class HatchetRuns:
    """Trigger, follow, wait for and cancel runs; each recorded in the local journal."""

    def __init__(self, config: Config, journal: Journal | None = None) -> None:
        self.config = config
        self._client_config = client_config(config)
        self._timeout = config.hatchet.request_timeout
        self._channel = new_conn(self._client_config, False)
        self._auth = create_authorization_header(self._client_config.token)
        self._admin = AdminServiceStub(self._channel)
        self._workflows = WorkflowServiceStub(self._channel)
        self.journal = journal or Journal.open(config.data.dir)

    def close(self) -> None:
        self._channel.close()
        self.journal.close()

    def submit(self, workflow: Workflow, input: BaseModel, *, job_id: str | None = None) -> tuple[str, str]:
        """Trigger a run; (job id, run id). The job is recorded only once the engine took the run."""
        job_id = job_id or new_job_id()
        trace_id = new_trace_id()
        metadata = {"job_id": job_id, "trace_id": trace_id, "vm": self.config.ssh.vm_key}
        request = TriggerWorkflowRequest(
            name=self._client_config.apply_namespace(workflow.name),
            input=input.model_dump_json(),
            additional_metadata=json.dumps(metadata),
        )
        what = f"triggering {workflow.name}"
        size, limit = request.ByteSize(), self._client_config.grpc_max_send_message_length
        if size > limit:  # gRPC refuses it (the engine's own limit is 4 MiB by default too)
            raise UsageError(
                f"{what}: the job's input is {size} bytes, over the {limit} bytes a message to "
                "Hatchet may carry; run it on the local engine (--engine local)"
            )
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                answer = self._workflows.TriggerWorkflow(
                    request, metadata=self._auth, timeout=max(0.1, deadline - time.monotonic())
                )
                break
            except grpc.RpcError as exc:
                if _not_sent(exc) and time.monotonic() + RETRY_PAUSE < deadline:
                    time.sleep(RETRY_PAUSE)  # the engine restarting: the request never left
                    continue
                error = translate(exc, what, self.config)
                if not _not_sent(exc) and exc.code() in _UNKNOWN_OUTCOME:
                    error = ConnectError(
                        f"{error}; the run may have started there all the same, as job {job_id} "
                        "(its metadata job_id): `win-automation jobs list` shows it once a worker "
                        "on this host has taken it"
                    )
                raise error from exc
        run_id = answer.workflow_run_id
        record_job(
            self.journal,
            workflow,
            input,
            job_id=job_id,
            trace_id=trace_id,
            run_id=run_id,
            artifacts_root=self.config.artifacts.out_dir,
        )
        log.info(
            "run triggered",
            extra={"op": "trigger", "job_id": job_id, "run_id": run_id, "workflow": workflow.name},
        )
        return job_id, run_id

    def details(self, run_id: str, workflow: Workflow) -> RunView:
        """The run as the engine tells it; ServiceRefused when that cannot be used (see above)."""
        try:
            answer = self._admin.GetRunDetails(
                admin_pb2.GetRunDetailsRequest(external_id=run_id), metadata=self._auth, timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"run {run_id}", self.config) from exc
        steps = {s.name for s in workflow.steps}
        tasks = {}
        for name, task in answer.task_runs.items():
            if name not in steps:
                raise self._unusable(run_id, f"task {name!r} is no step of workflow {workflow.name}")
            status = _status(task.status)
            output = None
            if status == "COMPLETED" and task.output:
                model = workflow.step(name).output
                try:
                    data = json.loads(task.output.decode("utf-8"))
                except ValueError as exc:  # not UTF-8, not JSON
                    raise self._unusable(run_id, f"step {name}'s output is not JSON ({exc})") from None
                try:
                    output = model.model_validate(data)
                except ValidationError as exc:
                    problem = f"step {name}'s output does not fit {model.__name__} ({exc.errors()[0]['msg']})"
                    raise self._unusable(run_id, problem) from None
            tasks[name] = TaskView(status, output, task.error or None)
        status = _status(answer.status)
        if answer.done and status not in _STATES:
            raise self._unusable(run_id, f"the run is done with status {status}, unknown here")
        return RunView(run_id, status, answer.done, tasks)

    def _unusable(self, run_id: str, problem: str) -> ServiceRefused:
        return ServiceRefused(
            f"run {run_id}: unusable answer from Hatchet at {self.config.hatchet.host_port}: {problem}"
        )

    def wait(
        self,
        workflow: Workflow,
        job_id: str,
        run_id: str,
        progress: Callable[[str, str], None] = lambda step, state: None,
        poll: float = POLL_SECONDS,
    ) -> JobOutcome:
        """Follow the run until it ends (calling `progress(step, state)` on each change). An
        engine that answers nothing for `hatchet.request_timeout` ends the wait (ConnectError);
        the run goes on there, and its job stays as last seen."""
        seen: dict[str, str] = {}
        started, hinted = time.monotonic(), False
        answered = started
        while True:
            try:
                details = self.details(run_id, workflow)
            except ConnectError as exc:
                if time.monotonic() - answered < self._timeout:
                    time.sleep(poll)
                    continue
                raise ConnectError(
                    f"following job {job_id}: {exc}; the run goes on there: "
                    f"`win-automation jobs show {job_id}` brings its state here later"
                ) from exc
            answered = time.monotonic()
            waiting = answered - started > NO_WORKER_HINT_SECONDS
            if not hinted and waiting and all(t.status == "QUEUED" for t in details.tasks.values()):
                hinted = True
                progress("*", "still queued: no worker has taken it (is `win-automation worker` running?)")
            for name, task in details.tasks.items():
                state = _STATES.get(task.status, JobState.RUNNING).value
                if seen.get(name) != state:
                    seen[name] = state
                    progress(name, state)
            if details.finished:
                return self._outcome(workflow, job_id, details)
            time.sleep(poll)

    def sync(self, workflow: Workflow, job_id: str, run_id: str, *, patience: float = 0.0) -> None:
        """Record the run's current state in the journal, waiting up to `patience` s for its end."""
        deadline = time.monotonic() + patience
        while True:
            details = self.details(run_id, workflow)
            if details.finished:
                self._outcome(workflow, job_id, details)
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        steps = {s.name: s.state for s in self.journal.steps(job_id)}
        recorder = JobRecorder(self.journal, job_id, workflow)
        for name, task in details.tasks.items():
            if task.status == "RUNNING" and steps.get(name) == JobState.QUEUED:
                with contextlib.suppress(IllegalTransition):  # the worker on this host got there first
                    recorder.attempt_started(name, 1)

    def _outcome(self, workflow: Workflow, job_id: str, details: RunView) -> JobOutcome:
        job = self.journal.get_job(job_id)
        state = _STATES.get(details.status, JobState.FAILED)
        outcome = JobOutcome(job_id, job.trace_id, workflow.name, state, engine="hatchet")
        folder = job_folder(artifacts_root(job, self.config), job_id)
        outcome.artifacts_dir = folder if folder.is_dir() else None
        # A failed step's output (a failed command's result) reaches the journal only on the
        # worker's host: when that is this host, the caller gets it as on the local engine.
        journaled = {
            s.name: s.output_json
            for s in self.journal.steps(job_id)
            if s.state == JobState.FAILED and s.output_json is not None
        }
        for name, task in details.tasks.items():
            if task.status == "FAILED" and name in journaled:
                outcome.outputs[name] = workflow.step(name).output.model_validate_json(journaled[name])
            if task.status == "COMPLETED" and task.output is not None:
                outcome.outputs[name] = task.output
            if task.status == "FAILED" and task.error and outcome.error is None:
                message, code = parse_failure(task.error)
                outcome.error, outcome.error_code = f"step {name}: {message}", code
        missing = [s.name for s in workflow.steps if s.name not in outcome.outputs]
        if state == JobState.SUCCEEDED and missing:  # not recorded as succeeded: that would lie
            problem = f"the run is COMPLETED without the output of step {', '.join(missing)}"
            raise self._unusable(details.run_id, problem)
        if state == JobState.CANCELLED:
            outcome.error, outcome.error_code = outcome.error or "cancelled", Cancelled.exit_code
        self._record_outcome(workflow, job_id, details, outcome)
        return outcome

    def _record_outcome(self, workflow: Workflow, job_id: str, details: RunView, outcome: JobOutcome) -> None:
        """Bring the local record up to the engine's view through the same state machine the
        worker records with; what the worker (on this host) recorded first is left as it is."""
        recorder = JobRecorder(self.journal, job_id, workflow)
        for name, task in details.tasks.items():
            status = task.status
            if status == "COMPLETED" and name in outcome.outputs:
                recorder.succeeded(name, outcome.outputs[name])
            elif status == "FAILED":
                message, code = parse_failure(task.error or "")
                recorder.failed(name, message, code)
        if outcome.state in (JobState.CANCELLED, JobState.FAILED):
            recorder.end(outcome.state, outcome.error, outcome.error_code)
        else:
            recorder.end_if_done()

    def cancel(self, run_id: str) -> list[str]:
        """Cancel every task of the run (v1 AdminService/CancelTasks)."""
        try:
            response = self._admin.CancelTasks(
                admin_pb2.CancelTasksRequest(external_ids=[run_id]),
                metadata=self._auth,
                timeout=self._timeout,
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"cancelling run {run_id}", self.config) from exc
        return list(response.cancelled_tasks)
