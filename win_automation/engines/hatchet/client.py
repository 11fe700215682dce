"""Workflows compiled for the Hatchet SDK, and the SDK's client.

- `connect(config)`: a `Hatchet` client from the project's config (token checked first, in the
  project's terms; TLS strategy, host:port and namespace from `hatchet.*`).
- `compile_workflow(hatchet, workflow, runtime)`: a `Workflow` becomes `hatchet.workflow(...)`
  with one async task per step (parents, retries, backoff, execution timeout, the workflow's
  labels as required desired worker labels; GUI workflows get the concurrency key
  `additional_metadata.vm` with one run at a time). The task runs the plain step function in a
  thread (a blocked event loop would miss heartbeats) through `TaskRuntime`, which journals it on
  the worker's host. A final failure becomes NonRetryableException here; a cancelled run reaches
  the task as CancelledError and sets the step's cancel flag.

The engine's RPCs made with a deadline (the version check, registration) and the translation of
gRPC failures are win_automation.engines.hatchet.rpc; the triggering side of a job command
(trigger, follow, cancel) is win_automation.engines.hatchet.runs.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from hatchet_sdk import (
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    DesiredWorkerLabel,
    Hatchet,
    NonRetryableException,
)
from pydantic import BaseModel

from win_automation.config import Config
from win_automation.definition import Step, Workflow
from win_automation.engines.hatchet.rpc import client_config
from win_automation.engines.hatchet.runtime import StepFailure, TaskRuntime
from win_automation.errors import Cancelled

VM_CONCURRENCY_KEY = "additional_metadata.vm"
EXECUTION_GRACE = 30.0
# how long a task may wait for a worker before the engine cancels it (the SDK's default is 5 min,
# too short for queued jobs to survive a worker restart or a busy VM)
SCHEDULE_TIMEOUT = timedelta(hours=24)


class TaskFailed(Exception):
    """A failed attempt the engine may retry (its text is `message [exit N]`)."""


def connect(config: Config) -> Hatchet:
    return Hatchet(config=client_config(config))


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
