"""`aloha-task`: one ShowUI-Aloha GUI task on the VM's desktop, followed to its end.

A GUI workflow (one desktop, one GUI job: the per-VM lock on the local engine, a concurrency key
on Hatchet) with one step, `run-task`:
1. the desktop probe (operations.desktop): a locked desktop, or nobody logged on, refuses the job
   (exit 1) before anything is sent to Aloha;
2. both services checked (`GET /`): unreachable is exit 3, a wrong answer exit 1;
3. the task started on the client, told the server's `/generate_action`; a 409 means the desktop
   is busy with another task (exit 1, nothing started);
4. followed until `/run_task` stops answering 409. At `timeout_seconds` it sends `/stop`, waits
   for the task to end and fails with OperationTimeout (124); a cancelled job does the same and
   ends cancelled (130). A client that stops answering meanwhile fails it with exit 3.
   Any other end once the task started (an answer that is not Aloha's, a bug, Ctrl-C or SIGTERM)
   sends it one best-effort /stop (Aloha.abandon) before the failure goes on, with its own exit
   code: the error says so, and the failed step's output (`reason` `failed`) and response.json's
   `error` carry `stop_sent`.

Whatever happens, the job's `response.json` (artifact type `aloha`) is written: the task's length
and sha256, how it ended, and every request and answer in order (identical consecutive polls in
one record with their count: bounded however long the task runs). The step's output is small (no
task text): how the task ended, with counts and timings.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import Cancelled, OperationTimeout, WinAutomationError

if TYPE_CHECKING:
    from win_automation.operations.aloha import Followed

MAX_TASK_CHARS = 4000


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only spaces")
    return value


class AlohaTaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Annotated[str, AfterValidator(_has_text)] = Field(
        ..., min_length=1, max_length=MAX_TASK_CHARS, description="What to do, in words."
    )
    trace_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[^/\\\x00-\x1f]+$",
        description="The demonstration trace the server should follow (its name).",
    )
    max_steps: int | None = Field(None, ge=1, le=500, description="Most steps the client takes.")
    screen: int = Field(0, ge=0, le=15, description="The screen the client acts on (selected_screen).")
    timeout_seconds: float = Field(1800.0, gt=0, le=86400, description="Deadline of the task.")


class AlohaTaskOutput(BaseModel):
    task_length: int
    task_sha256: str
    reason: str
    """`ended` (by itself), `deadline` or `cancelled` (stopped with /stop), or `failed` (sent
    /stop after following it failed: the step's error says why)."""
    ended: bool
    stop_sent: bool
    duration_ms: int
    polls: int
    exchanges: int
    server_latency_ms: int | None = None
    client_latency_ms: int | None = None


def run_task(inp: AlohaTaskInput, ctx: StepContext) -> AlohaTaskOutput:
    # imported here: the CLI validates AlohaTaskInput without loading httpx and paramiko
    from win_automation.operations.aloha import task_digest
    from win_automation.operations.desktop import require_desktop

    vm = ctx.vm
    aloha = vm.aloha
    length, sha = task_digest(inp.task)
    about: dict[str, object] = {"job_id": ctx.job_id, "task_length": length, "task_sha256": sha}
    started = time.monotonic()
    health: dict[str, int | None] = {}

    def output_of(followed: Followed) -> AlohaTaskOutput:
        return AlohaTaskOutput(
            task_length=length,
            task_sha256=sha,
            reason=followed.reason,
            ended=followed.ended,
            stop_sent=followed.stop_sent,
            duration_ms=followed.duration_ms,
            polls=followed.polls,
            exchanges=aloha.exchange_count,
            server_latency_ms=health.get("server"),
            client_latency_ms=health.get("client"),
        )

    try:
        require_desktop(vm)
        health = {h.service: h.latency_ms for h in aloha.check()}
        aloha.start(inp.task, max_steps=inp.max_steps, screen=inp.screen, trace_id=inp.trace_id)
        followed: Followed = aloha.follow(inp.timeout_seconds)
        output = output_of(followed)
        about["outcome"] = output.model_dump()
    except BaseException as exc:  # Ctrl-C and SIGTERM too (KeyboardInterrupt): a started task is stopped
        stopped = aloha.abandon(exc)  # follow() did it already, unless it failed outside follow
        if stopped is not None and isinstance(exc, WinAutomationError):
            exc.message += _stopped(stopped)
            exc.result = output_of(stopped)  # journaled with the failure, as a deadline's is
        about["error"] = _error(exc, stopped)
        raise
    finally:
        about["duration_ms"] = round((time.monotonic() - started) * 1000)
        ctx.artifacts.write_text("aloha", "response.json", aloha.transcript(**about))
    ctx.log.info(
        "aloha task finished",
        extra={"op": "aloha.run", "reason": followed.reason, "polls": followed.polls, "task_len": length},
    )
    if followed.reason == "cancelled":
        raise Cancelled("cancelled: the Aloha task was sent /stop" + _ending(followed), result=output)
    if followed.reason == "deadline":
        raise OperationTimeout(
            f"the Aloha task passed its deadline of {inp.timeout_seconds:g}s and was sent /stop"
            + _ending(followed),
            result=output,
        )
    return output


def _error(exc: BaseException, stopped: Followed | None) -> dict[str, object]:
    """response.json's `error`: the failure's line and exit code, and the /stop it was sent."""
    if isinstance(exc, WinAutomationError):
        error: dict[str, object] = {"message": str(exc), "exit_code": exc.exit_code}
    elif isinstance(exc, Exception):
        error = {"message": f"{type(exc).__name__}: {exc}".splitlines()[0], "exit_code": 1}
    else:
        error = {"message": "interrupted (Ctrl-C or SIGTERM)", "exit_code": Cancelled.exit_code}
    if stopped is not None:
        error.update(stop_sent=True, stop_answer=stopped.stop_answer, stop_error=stopped.stop_error)
    return error


def _stopped(stopped: Followed) -> str:
    """What the error adds once the task was sent /stop after it."""
    if stopped.stop_error is not None:
        return f"; sending the task /stop failed: {stopped.stop_error}"
    if stopped.ended:
        return "; the task had ended (/stop found none running)"
    return "; the task was sent /stop"


def _ending(followed: Followed) -> str:
    if followed.stop_error is not None:
        return f" (stopping it failed: {followed.stop_error})"
    if followed.ended:
        return " (it ended)"
    return " (it had not ended when aloha.stop_timeout passed)"


aloha_task = Workflow(
    name="aloha-task",
    input=AlohaTaskInput,
    gui=True,
    description="Run a ShowUI-Aloha GUI task on the VM's desktop and follow it to its end.",
    artifact_types=("aloha",),
    counters=("aloha_runs_total",),
    steps=(Step("run-task", run_task, AlohaTaskOutput, timeout_seconds=86400 + 600),),
)
