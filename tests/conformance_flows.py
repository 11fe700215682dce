"""Workflows for the engine conformance suite (tests/test_conformance.py), loaded by both engines
through WIN_AUTOMATION_WORKFLOW_MODULES=conformance_flows.

`conf-branches` has every step outcome at once: a failing step with a dependent (skipped), an
independent branch that still runs, a step with nothing to do (errors.Skipped) and a retried step.
`conf-timeout` passes its deadline; `conf-cancel` waits to be cancelled; `conf-skip` has nothing to do.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import Cancelled, CommandFailed, ConnectError, Skipped


class In(BaseModel):
    marker: str = ""


class Out(BaseModel):
    value: int = 0


def ok(inp: In, ctx: StepContext) -> Out:
    return Out(value=1)


def fails(inp: In, ctx: StepContext) -> Out:
    raise CommandFailed("the command exited with 7", exit_code=7, result=Out(value=7))


def after_ok(inp: In, ctx: StepContext) -> Out:
    return Out(value=ctx.parent("root", Out).value + 1)


def nothing_to_do(inp: In, ctx: StepContext) -> Out:
    raise Skipped("already done", result=Out(value=0))


def flaky(inp: In, ctx: StepContext) -> Out:
    if ctx.attempt == 1:
        raise ConnectError("the VM did not answer (first attempt)")
    return Out(value=ctx.attempt)


def overstays(inp: In, ctx: StepContext) -> Out:
    deadline = time.monotonic() + 30
    while not ctx.cancelled() and time.monotonic() < deadline:
        time.sleep(0.02)
    return Out(value=-1)


def waits_for_cancel(inp: In, ctx: StepContext) -> Out:
    ctx.artifacts.write_text("conf", "started.txt", inp.marker)
    deadline = time.monotonic() + 60
    while not ctx.cancelled() and time.monotonic() < deadline:
        time.sleep(0.02)
    raise Cancelled("stopped at a safe point")


conf_branches = Workflow(
    name="conf-branches",
    input=In,
    steps=(
        Step("root", ok, Out),
        Step("fails", fails, Out, parents=("root",)),
        Step("dependent", ok, Out, parents=("fails",)),
        Step("grandchild", ok, Out, parents=("dependent",)),
        Step("independent", after_ok, Out, parents=("root",)),
        Step("nothing", nothing_to_do, Out),
        Step("flaky", flaky, Out, retries=1, backoff_seconds=0.05),
    ),
)
conf_timeout = Workflow(
    name="conf-timeout", input=In, steps=(Step("overstays", overstays, Out, timeout_seconds=1),)
)
conf_cancel = Workflow(
    name="conf-cancel", input=In, steps=(Step("waits", waits_for_cancel, Out),), artifact_types=("conf",)
)
conf_skip = Workflow(
    name="conf-skip",
    input=In,
    steps=(Step("nothing", nothing_to_do, Out), Step("after", ok, Out, parents=("nothing",))),
)
