"""`ping`: a self-check of the job runtime that never touches the VM.

Three steps, each checking one part end to end: `check-engine` (steps run and pass outputs on),
`check-journal` (the journal in the data directory opens and holds this job's record; it then
holds the job for `hold_seconds`, checking for cancellation, so `jobs cancel` can be tried on it),
and `write-artifact` (the artifact folder is writable: writes `ping.json` and records it in the
manifest). Useful after install (`win-automation run ping`), for engine benchmarks and for the
Hatchet worker's end-to-end tests.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time

from pydantic import BaseModel, ConfigDict, Field

from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import Cancelled, NotFoundError
from win_automation.jobs.journal import Journal


class PingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field("ping", max_length=1000, description="Echoed back in every step's output.")
    hold_seconds: float = Field(
        0.0, ge=0, le=3600, description="Keep `check-journal` running this long (to try `jobs cancel`)."
    )


class EngineCheck(BaseModel):
    message: str
    host: str
    pid: int
    python: str
    attempt: int


class JournalCheck(BaseModel):
    message: str
    journal: str
    job_recorded: bool
    job_state: str | None
    held_seconds: float


class ArtifactCheck(BaseModel):
    message: str
    path: str
    size_bytes: int
    sha256: str


def check_engine(inp: PingInput, ctx: StepContext) -> EngineCheck:
    ctx.log.info("engine reached", extra={"op": "ping"})
    return EngineCheck(
        message=inp.message,
        host=socket.gethostname(),
        pid=os.getpid(),
        python=platform.python_version(),
        attempt=ctx.attempt,
    )


def check_journal(inp: PingInput, ctx: StepContext) -> JournalCheck:
    engine = ctx.parent("check-engine", EngineCheck)
    with Journal.open(ctx.config.data.dir, recover=False) as journal:
        try:
            state: str | None = journal.get_job(ctx.job_id).state.value
        except NotFoundError:
            state = None  # an engine that does not journal this job
        path = str(journal.path)
    started = time.monotonic()
    while time.monotonic() - started < inp.hold_seconds:
        if ctx.cancelled():
            raise Cancelled("ping cancelled while holding")
        time.sleep(0.02)
    return JournalCheck(
        message=engine.message,
        journal=path,
        job_recorded=state is not None,
        job_state=state,
        held_seconds=round(time.monotonic() - started, 3),
    )


def write_artifact(inp: PingInput, ctx: StepContext) -> ArtifactCheck:
    journal = ctx.parent("check-journal", JournalCheck)
    body = {"job_id": ctx.job_id, "trace_id": ctx.trace_id, "message": journal.message}
    entry = ctx.artifacts.write_text("ping", "ping.json", json.dumps(body, indent=2) + "\n")
    return ArtifactCheck(
        message=journal.message, path=entry.path, size_bytes=entry.size_bytes, sha256=entry.sha256
    )


ping = Workflow(
    name="ping",
    input=PingInput,
    description="Check the job runtime (engine, journal, artifact folder) without touching the VM.",
    artifact_types=("ping",),
    steps=(
        Step("check-engine", check_engine, EngineCheck, timeout_seconds=30),
        Step("check-journal", check_journal, JournalCheck, parents=("check-engine",), timeout_seconds=3700),
        Step(
            "write-artifact",
            write_artifact,
            ArtifactCheck,
            parents=("check-journal",),
            retries=2,
            backoff_seconds=0.2,
            timeout_seconds=60,
        ),
    ),
)
