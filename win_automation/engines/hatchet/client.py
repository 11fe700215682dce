"""The Hatchet adapter: with the worker and `runs`, the only modules that import hatchet_sdk.

- `connect(config)`: a `Hatchet` client from the project's config (token checked first, in the
  project's terms; TLS strategy, host:port and namespace from `hatchet.*`).
- `compile_workflow(hatchet, workflow, runtime)`: a `Workflow` becomes `hatchet.workflow(...)`
  with one async task per step (parents, retries, backoff, execution timeout, the workflow's
  labels as required desired worker labels; GUI workflows get the concurrency key
  `additional_metadata.vm` with one run at a time). The task runs the plain step function in a
  thread (a blocked event loop would miss heartbeats) through `TaskRuntime`, which journals it on
  the worker's host. A final failure becomes NonRetryableException here; a cancelled run reaches
  the task as CancelledError and sets the step's cancel flag.
- `check_engine_version(config)`: the engine's version, refused when too old for the SDK.
- `register_workflows(config, compiled)`: PutWorkflow for each, with a deadline (the worker).

The triggering side of a job command (trigger, follow, cancel) is win_automation.engines.hatchet.
runs. gRPC failures are translated once, here (`translate`): UNAVAILABLE -> ConnectError,
UNAUTHENTICATED -> AuthError, NOT_FOUND -> NotFoundError, a deadline passed -> ConnectError.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from hatchet_sdk.contracts.v1.workflows_pb2_grpc import AdminServiceStub
from hatchet_sdk.utils.api_auth import create_authorization_header
from pydantic import BaseModel

from win_automation.config import Config
from win_automation.config.hatchet_token import token_claims
from win_automation.definition import Step, Workflow
from win_automation.engines.hatchet.runtime import StepFailure, TaskRuntime
from win_automation.errors import (
    AuthError,
    Cancelled,
    ConfigError,
    ConnectError,
    NotFoundError,
    WinAutomationError,
)
from win_automation.versions import MIN_HATCHET_ENGINE

MIN_ENGINE_VERSION = MIN_HATCHET_ENGINE  # see win_automation.versions
VM_CONCURRENCY_KEY = "additional_metadata.vm"
EXECUTION_GRACE = 30.0
# how long a task may wait for a worker before the engine cancels it (the SDK's default is 5 min,
# too short for queued jobs to survive a worker restart or a busy VM)
SCHEDULE_TIMEOUT = timedelta(hours=24)


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


_REFUSALS = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
)


def translate(exc: grpc.RpcError, what: str, config: Config) -> WinAutomationError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    where = f"Hatchet at {config.hatchet.host_port}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{what}: {where} refused the token ({code.name}: {detail})")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{what}: {where}: {detail}")
    if code in _REFUSALS:  # it answered: no: a message over a size limit, a rate limit, a bad request
        return WinAutomationError(f"{what}: {where} refused it ({code.name}: {detail})")
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


def register_workflows(config: Config, compiled: Sequence[Any]) -> None:
    """Register each compiled workflow (PutWorkflow), with `hatchet.request_timeout` as the
    deadline of each. The SDK's worker registers them again as it starts, the same versions (no
    change on the engine), but with no deadline: an engine that took the connection and then
    answered nothing held `win-automation worker` for good after "worker starting"."""
    sdk_config = client_config(config)
    channel = new_conn(sdk_config, False)
    stub = AdminServiceStub(channel)
    try:
        for workflow in compiled:
            try:
                stub.PutWorkflow(
                    workflow.to_proto(),
                    metadata=create_authorization_header(sdk_config.token),
                    timeout=config.hatchet.request_timeout,
                )
            except grpc.RpcError as exc:
                raise translate(exc, f"registering workflow {workflow.name}", config) from exc
    finally:
        channel.close()


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
