"""`playwright-run` (and `playwright-run-headed`, a GUI job): run a user's Playwright script against
the browser on the VM.

The script's text travels in the input (so a Hatchet worker on another host runs it too); it
defines `run(page, context, input)` and returns JSON, which is the step's output (`result`). It
may write more artifacts with `win_automation.operations.playwright_jobs.save_artifact(name, data)`.
The trace is recorded unless `trace` is false; whatever happens the context is closed, and a
script that fails still leaves `screenshot.png`, `trace.zip` and `traceback.txt`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from win_automation.definition import Step, StepContext, Workflow
from win_automation.operations.desktop import headed_twin
from win_automation.operations.playwright import browser_session
from win_automation.operations.playwright_jobs import run_script

MAX_SCRIPT_CHARS = 256 * 1024


class RunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    script: str = Field(..., min_length=1, max_length=MAX_SCRIPT_CHARS, description="The script's text.")
    script_name: str = Field("script.py", min_length=1, description="Its file name (errors, tracebacks).")
    input: Any = Field(None, description="JSON given to run() as `input`.")
    trace: bool = Field(True, description="Record a Playwright trace (trace.zip).")
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Default deadline of each page action.")


class RunOutput(BaseModel):
    result: Any = None
    artifacts: list[str]


def run(inp: RunInput, ctx: StepContext) -> RunOutput:
    with browser_session(
        ctx.config, ctx.artifacts, trace=inp.trace, timeout=inp.timeout_seconds, cancelled=ctx.cancelled
    ) as job:
        result = run_script(job, inp.script, inp.script_name, inp.input)
        job.save("result.json", json.dumps(result, indent=2) + "\n")
    return RunOutput(result=result, artifacts=job.written)


ARTIFACT_TYPES = ("playwright",)
COUNTERS = ("playwright_sessions_total",)

playwright_run = Workflow(
    name="playwright-run",
    input=RunInput,
    artifact_types=ARTIFACT_TYPES,
    counters=COUNTERS,
    description="Run a Playwright script (run(page, context, input)) against the browser on the VM.",
    steps=(Step("run", run, RunOutput, timeout_seconds=86400),),
)

playwright_run_headed = headed_twin(
    playwright_run,
    description="Run a Playwright script against the VM's headed browser (a GUI job).",
)
