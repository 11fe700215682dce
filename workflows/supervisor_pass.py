"""`supervisor-pass`: one supervisor pass over the VM as a job (operations.supervisor.run_pass).

Run by `win-automation supervisor run` (each pass of the loop, or `--once` from a timer) on the
local engine, and on Hatchet as a cron workflow when `supervisor.cron` is set: the worker
registers the schedule with the workflow, so the same pass runs there with no change to it. The
circuit breaker and the remediation claims live in the journal of the host that runs the pass.

The step writes `report.json` (every check, remediation and breaker transition) to the job's
artifacts. A pass with a failed check fails the job (HealthCheckFailed, exit 1; BreakerOpen, exit
75, when the breaker kept it from repairing anything), carrying its report as the step's output.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from pydantic import BaseModel, ConfigDict

from win_automation.config import Config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import BreakerOpen, ConfigError, HealthCheckFailed, UsageError
from win_automation.operations.checks import failpoints
from win_automation.operations.supervisor import COUNTERS, run_pass


class PassInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PassResult(BaseModel):
    ok: bool
    mode: str
    breaker_state: str
    failed: list[str]
    report: dict[str, Any]


def supervise(inp: PassInput, ctx: StepContext) -> PassResult:
    try:
        forced = failpoints()
    except UsageError as exc:  # on a worker the environment is configuration
        raise ConfigError(str(exc)) from None
    owner = f"{socket.gethostname()}:{os.getpid()}:{ctx.job_id}"
    report = run_pass(ctx.config, vm=ctx.vm, owner=owner, forced=forced)
    data = report.as_dict()
    ctx.artifacts.write_text("supervisor", "report.json", json.dumps(data, indent=2, default=str) + "\n")
    result = PassResult(
        ok=report.ok,
        mode=report.mode,
        breaker_state=str(report.breaker.get("state")),
        failed=[c.name for c in report.checks if c.status == "fail"],
        report=data,
    )
    if report.breaker_open:
        left = report.breaker.get("cooldown_left_seconds", 0)
        trial = report.breaker.get("trial_owner") if report.breaker.get("state") == "half-open" else None
        why = (
            f"breaker half-open: the trial pass runs in {trial}" if trial else f"breaker open ({left}s left)"
        )
        raise BreakerOpen(f"{why}: {', '.join(result.failed)} failing, nothing repaired", result=result)
    if not report.ok:
        causes = "; ".join(f"{c.name}: {c.cause}" for c in report.checks if c.status == "fail")
        raise HealthCheckFailed(f"{len(result.failed)} check(s) failed: {causes}", result=result)
    return result


def schedule(config: Config) -> str | None:
    return config.supervisor.cron


supervisor_pass = Workflow(
    name="supervisor-pass",
    input=PassInput,
    description="One supervisor pass: check the VM's services, repair what failed, record the breaker.",
    steps=(Step("pass", supervise, PassResult, timeout_seconds=900),),
    artifact_types=("supervisor",),
    counters=COUNTERS,
    cron=schedule,
)
