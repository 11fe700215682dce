"""The Hatchet adapter: the one module (with the worker) that imports hatchet_sdk.

- `connect(config)`: a `Hatchet` client from the project's config (token checked first, in the
  project's terms; TLS strategy, host:port and namespace from `hatchet.*`).
- `compile_workflow(hatchet, workflow, runtime)`: a `Workflow` becomes `hatchet.workflow(...)`
  with one async task per step (parents, retries, backoff, execution timeout, the workflow's
  labels as required desired worker labels; GUI workflows get the concurrency key
  `additional_metadata.vm` with one run at a time). The task runs the plain step function in a
  thread (a blocked event loop would miss heartbeats) through `TaskRuntime`, which journals it on
  the worker's host. A final failure becomes NonRetryableException here; a cancelled run reaches
  the task as CancelledError and sets the step's cancel flag.
- `HatchetRuns`: the triggering side of a job command: trigger a run (the job id, trace id and
  VM travel in its additional metadata), follow its tasks, wait for the end, cancel it; each run
  is recorded in the local journal with `engine='hatchet'` and the run id as `external_id`. It
  calls the engine's RPCs itself, each with `hatchet.request_timeout` as its deadline.

gRPC failures are translated once, here: UNAVAILABLE -> ConnectError, UNAUTHENTICATED ->
AuthError, NOT_FOUND -> NotFoundError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from hatchet_sdk import (
    ClientConfig,
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    DesiredWorkerLabel,
    Hatchet,
    NonRetryableException,
)
from hatchet_sdk.config import ClientTLSConfig, TenacityConfig
from hatchet_sdk.connection import new_conn
from hatchet_sdk.contracts.dispatcher_pb2 import GetVersionRequest
from hatchet_sdk.contracts.dispatcher_pb2_grpc import DispatcherStub
from hatchet_sdk.contracts.v1 import workflows_pb2 as admin_pb2
from hatchet_sdk.contracts.v1.workflows_pb2_grpc import AdminServiceStub
from hatchet_sdk.contracts.workflows_pb2 import TriggerWorkflowRequest
from hatchet_sdk.contracts.workflows_pb2_grpc import WorkflowServiceStub
from hatchet_sdk.utils.api_auth import create_authorization_header
from pydantic import BaseModel

from win_automation.artifacts.store import job_folder
from win_automation.config import Config
from win_automation.config.hatchet_token import token_claims
from win_automation.definition import Step, Workflow
from win_automation.engines.hatchet.runtime import StepFailure, TaskRuntime, parse_failure, record_job
from win_automation.engines.outcome import JobOutcome, artifacts_root
from win_automation.engines.recorder import JobRecorder
from win_automation.errors import (
    AuthError,
    Cancelled,
    ConfigError,
    ConnectError,
    IllegalTransition,
    NotFoundError,
    UsageError,
    WinAutomationError,
)
from win_automation.jobs.ids import new_job_id, new_trace_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState
from win_automation.versions import MIN_HATCHET_ENGINE

log = logging.getLogger(__name__)
MIN_ENGINE_VERSION = MIN_HATCHET_ENGINE  # see win_automation.versions
VM_CONCURRENCY_KEY = "additional_metadata.vm"
POLL_SECONDS = 0.25
RETRY_PAUSE = 0.5  # between triggers that never reached the engine
# a call that may have reached the engine: its trigger is not sent again (it would run twice)
_UNKNOWN_OUTCOME = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
EXECUTION_GRACE = 30.0
NO_WORKER_HINT_SECONDS = 10.0
# how long a task may wait for a worker before the engine cancels it (the SDK's default is 5 min,
# too short for queued jobs to survive a worker restart or a busy VM)
SCHEDULE_TIMEOUT = timedelta(hours=24)
_STATES = {
    "QUEUED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
}


class TaskFailed(Exception):
    """A failed attempt the engine may retry (its text is `message [exit N]`)."""


def client_config(config: Config, cls: type[ClientConfig] = ClientConfig, **extra: Any) -> ClientConfig:
    """The SDK's config from ours (`cls` and `extra` let the worker use its subclass)."""
    token_claims(config)  # ConfigError before the SDK sees a bad token
    assert config.hatchet.token is not None
    host = config.hatchet.host_port.rpartition(":")[0]
    return cls(
        token=config.hatchet.token.get_secret_value().strip(),
        host_port=config.hatchet.host_port,
        namespace=config.hatchet.namespace,
        tls_config=ClientTLSConfig(strategy=config.hatchet.tls_strategy, server_name=host),
        tenacity=TenacityConfig(max_attempts=3),
        disable_log_capture=True,
        **extra,
    )


def connect(config: Config) -> Hatchet:
    return Hatchet(config=client_config(config))


def translate(exc: grpc.RpcError, what: str, config: Config) -> WinAutomationError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    where = f"Hatchet at {config.hatchet.host_port}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(f"{what}: {where} refused the token ({detail})")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{what}: {where}: {detail}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # a message over a size limit, a rate limit
        return WinAutomationError(f"{what}: {where} refused it ({detail})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        timeout = config.hatchet.request_timeout
        return ConnectError(f"{what}: {where} gave no answer within {timeout:g}s (paused or overloaded?)")
    return ConnectError(f"{what}: {where} is not reachable ({code.name if code else 'error'}: {detail})")


def check_engine_version(config: Config) -> str:
    """The engine's version (Dispatcher/GetVersion); ConfigError when it is too old for the SDK,
    ConnectError/AuthError when the engine cannot be reached or refuses the token."""
    sdk_config = client_config(config)
    stub = DispatcherStub(new_conn(sdk_config, False))
    try:
        response = stub.GetVersion(  # type: ignore[attr-defined]
            GetVersionRequest(),
            metadata=create_authorization_header(sdk_config.token),
            timeout=config.hatchet.request_timeout,
        )
        version = str(response.version)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            version = ""
        else:
            raise translate(exc, "checking the engine version", config) from exc
    parts = version.lstrip("v").split("-", 1)[0].split(".")
    numbers = tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else ()
    if numbers < MIN_ENGINE_VERSION:
        wanted = "v" + ".".join(map(str, MIN_ENGINE_VERSION))
        raise ConfigError(
            f"the Hatchet engine at {config.hatchet.host_port} is {version or 'older than v0.78'}; "
            f"hatchet-sdk 1.43 needs {wanted} or newer: upgrade hatchet-lite (README, Hatchet)"
        )
    return version


def _as_model(value: Any, model: type[BaseModel]) -> BaseModel:
    return value if isinstance(value, model) else model.model_validate(value)


def _task_fn(
    workflow: Workflow,
    step: Step,
    tasks: Mapping[str, Any],
    runtime: Callable[[], TaskRuntime],
    executor: Callable[[], ThreadPoolExecutor | None],
) -> Callable[..., Any]:
    async def task(input: BaseModel, ctx: Context) -> BaseModel:
        parents = {p: _as_model(ctx.task_output(tasks[p]), workflow.step(p).output) for p in step.parents}
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        run_id = ctx.workflow_run_id
        call = lambda: runtime().run_step(  # noqa: E731
            workflow,
            step,
            _as_model(input, workflow.input),
            run_id=run_id,
            metadata=dict(ctx.additional_metadata or {}),
            retry_count=ctx.retry_count,
            parents=parents,
            cancel=cancel,
        )
        try:
            return await loop.run_in_executor(executor(), call)
        except asyncio.CancelledError:
            cancel.set()
            loop.run_in_executor(executor(), runtime().cancelled, workflow, step, run_id)
            raise
        except StepFailure as failure:
            if failure.retry:
                raise TaskFailed(str(failure)) from None
            raise NonRetryableException(str(failure)) from None
        except Cancelled as exc:
            raise NonRetryableException(f"{exc} [exit {exc.exit_code}]") from None

    task.__name__ = step.name.replace("-", "_")
    task.__annotations__ = {"input": workflow.input, "ctx": Context, "return": step.output}
    return task


def compile_workflow(
    hatchet: Hatchet,
    workflow: Workflow,
    runtime: Callable[[], TaskRuntime],
    executor: Callable[[], ThreadPoolExecutor | None] = lambda: None,
) -> Any:
    """The Hatchet workflow for `workflow`: one task per step, nothing added but retries,
    timeouts, the VM concurrency key and labels."""
    concurrency = (
        ConcurrencyExpression(
            expression=VM_CONCURRENCY_KEY,
            max_runs=1,
            limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
        )
        if workflow.gui
        else None
    )
    hwf = hatchet.workflow(
        name=workflow.name,
        description=workflow.description or None,
        input_validator=workflow.input,
        concurrency=concurrency,
        on_crons=_crons(workflow, runtime),
    )
    labels = [DesiredWorkerLabel(key=k, value=v, required=True) for k, v in workflow.labels.items()]
    tasks: dict[str, Any] = {}
    for step in workflow.steps:
        backoff = step.retries > 0 and step.backoff_seconds > 0
        tasks[step.name] = hwf.task(
            name=step.name,
            parents=[tasks[p] for p in step.parents],
            retries=step.retries,
            backoff_factor=2.0 if backoff else None,
            backoff_max_seconds=max(1, math.ceil(step.backoff_seconds * 2 ** max(0, step.retries - 1)))
            if backoff
            else None,
            # the step enforces its own deadline (a timeout is 124 on both engines); the engine's is
            # a backstop for a worker that stopped answering
            execution_timeout=timedelta(seconds=max(1, math.ceil(step.timeout_seconds + EXECUTION_GRACE))),
            schedule_timeout=SCHEDULE_TIMEOUT,
            desired_worker_labels=labels or None,
        )(_task_fn(workflow, step, tasks, runtime, executor))
    return hwf


def _crons(workflow: Workflow, runtime: Callable[[], TaskRuntime]) -> list[str] | None:
    """The workflow's cron schedule from the worker's config."""
    if workflow.cron is None:
        return None
    schedule = workflow.cron(runtime().config)
    return [schedule] if schedule else None


@dataclass(frozen=True)
class TaskView:
    status: str  # QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED (EVICTED)
    output: Any
    error: str | None


@dataclass(frozen=True)
class RunView:
    """A run as GetRunDetails tells it."""

    status: str
    done: bool
    tasks: dict[str, TaskView]

    @property
    def finished(self) -> bool:
        return self.done or self.status in ("COMPLETED", "FAILED", "CANCELLED")


def _not_sent(exc: grpc.RpcError) -> bool:
    """The call failed before its request left (no connection to the engine): safe to send again."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "")


class HatchetRuns:
    """Trigger, follow, wait for and cancel runs; each recorded in the local journal.

    It calls the engine's RPCs itself, each with `hatchet.request_timeout` as its deadline, where
    the SDK's calls have none and retry (3 x ~70 s on a stalled engine): a trigger is sent once
    (again only when it never left), and a run whose engine stops answering is given up on."""

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

    def details(self, run_id: str) -> RunView:
        try:
            answer = self._admin.GetRunDetails(
                admin_pb2.GetRunDetailsRequest(external_id=run_id), metadata=self._auth, timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"run {run_id}", self.config) from exc
        name = admin_pb2.RunStatus.Name
        tasks = {
            readable_id: TaskView(
                name(task.status), json.loads(task.output) if task.output else None, task.error or None
            )
            for readable_id, task in answer.task_runs.items()
        }
        return RunView(name(answer.status), answer.done, tasks)

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
                details = self.details(run_id)
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
            details = self.details(run_id)
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
                outcome.outputs[name] = workflow.step(name).output.model_validate(task.output)
            if task.status == "FAILED" and task.error and outcome.error is None:
                message, code = parse_failure(task.error)
                outcome.error, outcome.error_code = f"step {name}: {message}", code
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
