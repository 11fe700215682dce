"""`ssh-exec`: run one PowerShell or cmd command (or a .ps1 script) on the VM and keep its output.

Two steps on the VM (`ctx.vm`):
- `check`: when `check` is given (the idempotency check), run it; it passes when it exits 0.
- `exec`: when the check passed, the command is skipped: the step raises errors.Skipped, so the
  step and the job are recorded `skipped` (output `skipped: true`, exit code 0);
  otherwise run it with its deadline (`timeout_seconds`, killing the remote process tree when it
  passes). Writes the ssh artifacts `stdout.txt`, `stderr.txt`, `exit_code.txt` (plus
  `result.json`) to the job's folder either way; the step's output keeps only the last 64 K
  characters of each stream (`ExecOutput`), so payloads stay small.

A command that exits non-zero fails the step (and the job) with CommandFailed, whose exit code is
the command's (0-255, else 255); past its deadline it fails with OperationTimeout (124). Either
error carries the step's output, which the engines journal with the failure, so the CLI still
prints the command's output and `jobs list --state failed` finds failed commands. Connection,
authentication and host-key errors fail the step too, with no output. Output streams live through
`ctx.emit` as it arrives; a cancelled job kills the command's remote process tree (Cancelled, 130).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import Cancelled, CommandFailed, OperationTimeout, Skipped
from win_automation.operations.command_result import CommandResult, Shell, cli_exit_code, describe_exit_code
from win_automation.operations.ssh import skipped_result


class SshExecInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1, description="PowerShell or cmd text (a script's whole text).")
    shell: Shell = Field("powershell", description="powershell (encoded) or cmd (as given).")
    args: list[str] = Field(default_factory=list, description="Arguments for a PowerShell script.")
    timeout_seconds: float | None = Field(
        None, gt=0, description="Deadline of the command; unset means ssh.command_timeout."
    )
    check: str | None = Field(
        None, min_length=1, description="Idempotency check: skip the command when it exits 0."
    )
    display: str | None = Field(None, description="How the command is shown (a script's file name).")


class CheckOutput(BaseModel):
    checked: bool
    passed: bool
    exit_code: int | None = None


# Per stream, in the step's output: the journal row and the Hatchet payload (gRPC caps messages at
# 4 MB, and a child task receives its parents' outputs) stay small whatever the command prints.
OUTPUT_PREVIEW_CHARS = 64 * 1024


class ExecOutput(CommandResult):
    """The command's result. `stdout`/`stderr` hold at most their last OUTPUT_PREVIEW_CHARS
    characters (flagged `*_truncated`); the whole text is in the job's stdout.txt/stderr.txt."""

    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @classmethod
    def of(cls, result: CommandResult) -> ExecOutput:
        fields = result.model_dump()
        for stream in ("stdout", "stderr"):
            text = fields[stream]
            fields[f"{stream}_truncated"] = len(text) > OUTPUT_PREVIEW_CHARS
            fields[stream] = text[-OUTPUT_PREVIEW_CHARS:]
        return cls(**fields)


def check(inp: SshExecInput, ctx: StepContext) -> CheckOutput:
    if inp.check is None:
        return CheckOutput(checked=False, passed=False)
    result = ctx.vm.run(inp.check, shell=inp.shell, timeout=inp.timeout_seconds, live=False)
    if result.cancelled:
        raise Cancelled("cancelled while the idempotency check ran; its remote process tree was killed")
    ctx.log.info("idempotency check ran", extra={"op": "ssh.check", "exit_code": result.exit_code})
    return CheckOutput(checked=True, passed=result.ok, exit_code=result.exit_code)


def execute(inp: SshExecInput, ctx: StepContext) -> ExecOutput:
    display = inp.display or inp.command
    if ctx.parent("check", CheckOutput).passed:
        ctx.log.info("check passed: command skipped", extra={"op": "ssh.exec"})
        skipped = skipped_result(display, inp.shell)
        write_artifacts(ctx, skipped)
        raise Skipped(f"skipped: the check `{inp.check}` exited 0", result=ExecOutput.of(skipped))
    timeout = inp.timeout_seconds or ctx.config.ssh.command_timeout
    if inp.shell == "powershell":
        result = ctx.vm.powershell(inp.command, args=tuple(inp.args), timeout=timeout, display=display)
    else:
        result = ctx.vm.run(inp.command, shell="cmd", timeout=timeout)
    write_artifacts(ctx, result)
    output = ExecOutput.of(result)
    if result.cancelled:
        raise Cancelled("cancelled while the command ran; its remote process tree was killed", result=output)
    if result.timed_out:
        raise OperationTimeout(
            f"the command passed its deadline of {timeout:g}s; its remote process tree was killed",
            result=output,
        )
    if result.exit_code != 0:
        raise CommandFailed(
            f"the remote command exited with {describe_exit_code(result.exit_code)}",
            result=output,
            exit_code=cli_exit_code(result.exit_code),
        )
    return output


def write_artifacts(ctx: StepContext, result: CommandResult) -> None:
    ctx.artifacts.write_text("ssh", "stdout.txt", result.stdout)
    ctx.artifacts.write_text("ssh", "stderr.txt", result.stderr)
    ctx.artifacts.write_text("ssh", "exit_code.txt", f"{result.exit_code}\n")
    ctx.artifacts.write_text("ssh", "result.json", json.dumps(result.model_dump(), indent=2) + "\n")


ssh_exec = Workflow(
    name="ssh-exec",
    input=SshExecInput,
    description="Run a PowerShell or cmd command on the VM (optionally skipped by a check).",
    artifact_types=("ssh",),
    steps=(
        Step("check", check, CheckOutput, timeout_seconds=86400),
        Step("exec", execute, ExecOutput, parents=("check",), timeout_seconds=86400),
    ),
)
