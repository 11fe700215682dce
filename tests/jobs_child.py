"""A child process for the job-runtime tests: runs or resumes test workflows with the local engine.

    python tests/jobs_child.py run WORKFLOW [INPUT_JSON]      # prints the outcome as JSON
    python tests/jobs_child.py resume JOB_ID
    python tests/jobs_child.py journal-writer N               # creates N finished jobs

Config comes from the environment (WIN_AUTOMATION_DATA_DIR, WIN_AUTOMATION_ARTIFACT_OUT). The
workflows record every step run in `<data dir>/runs.log`, wait while `<data dir>/hold` exists,
and fail their middle step (non-transient) while `<data dir>/fail` exists.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from win_automation.config import load_config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.local import LocalEngine
from win_automation.errors import Cancelled, CommandFailed
from win_automation.jobs.journal import Journal


class In(BaseModel):
    size_mb: int = 0


class Out(BaseModel):
    step: str
    total: int = 0


def _data(ctx: StepContext) -> Path:
    return ctx.config.data.dir


def _record(ctx: StepContext, name: str) -> None:
    with (_data(ctx) / "runs.log").open("a") as handle:
        handle.write(f"{name} {ctx.job_id} {ctx.attempt}\n")


def first(inp: In, ctx: StepContext) -> Out:
    _record(ctx, "first")
    return Out(step="first", total=1)


def hold(ctx: StepContext) -> None:
    _record(ctx, "middle")
    (_data(ctx) / "middle-started").touch()
    while (_data(ctx) / "hold").exists():
        if ctx.cancelled():
            raise Cancelled("middle step saw the cancel")
        time.sleep(0.01)
    if (_data(ctx) / "fail").exists():
        raise CommandFailed("the fail marker is present")


def middle(inp: In, ctx: StepContext) -> Out:
    hold(ctx)
    return Out(step="middle", total=ctx.parent("first", Out).total + 1)


def desk(inp: In, ctx: StepContext) -> Out:
    hold(ctx)
    return Out(step="desk")


def last(inp: In, ctx: StepContext) -> Out:
    _record(ctx, "last")
    if inp.size_mb:
        chunk = b"x" * (1 << 20)
        ctx.artifacts.write_text("ssh", "stdout.txt", "small and complete\n")
        with ctx.artifacts.open("playwright", "trace.zip") as handle:
            for _ in range(inp.size_mb):
                handle.write(chunk)
                (_data(ctx) / "writing-large").touch()
    return Out(step="last", total=ctx.parent("middle", Out).total + 1)


gated = Workflow(
    name="gated",
    input=In,
    steps=(
        Step("first", first, Out),
        Step("middle", middle, Out, parents=("first",)),
        Step("last", last, Out, parents=("middle",)),
    ),
    artifact_types=("ssh", "playwright"),
)
desktop = Workflow(name="desktop", input=In, gui=True, steps=(Step("desk", desk, Out),))
WORKFLOWS = {w.name: w for w in (gated, desktop)}


def main() -> int:
    config = load_config(None).config
    command = sys.argv[1]
    if command == "journal-writer":
        journal = Journal.open(config.data.dir)
        from win_automation.jobs.state import JobState

        for _ in range(int(sys.argv[2])):
            job = journal.create_job("gated", "{}", steps=["first"])
            journal.set_job_state(job.job_id, JobState.RUNNING)
            journal.step_started(job.job_id, "first", attempt=1)
            journal.step_finished(job.job_id, "first", JobState.SUCCEEDED, output_json="{}")
            journal.set_job_state(job.job_id, JobState.SUCCEEDED)
        return 0
    engine = LocalEngine(config, poll=0.02)
    if command == "run":
        workflow = WORKFLOWS[sys.argv[2]]
        outcome = engine.run(workflow, workflow.parse_input(sys.argv[3] if len(sys.argv) > 3 else None))
    else:
        outcome = engine.resume(sys.argv[2], WORKFLOWS)
    print(json.dumps(outcome.as_dict()))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
