"""`ssh-exec`: run one PowerShell or cmd command (or a .ps1 script) on the VM and keep its output.

Two steps on the VM (`ctx.vm`):
- `check`: when `check` is given (the idempotency check), run it; it passes when it exits 0.
- `exec`: when the check passed, the command is skipped: the step raises errors.Skipped, so the
  step and the job are recorded `skipped` (output `skipped: true`, exit code 0);
  otherwise run it with its deadline (`timeout_seconds`, killing the remote process tree when it
  passes). Streams stdout and stderr into the job's ssh artifacts `stdout.txt` and `stderr.txt`
  as they arrive (the bytes the VM sent), then writes `exit_code.txt` and `result.json`; the
  step's output (and result.json) keeps only the last 64 K characters of each stream
  (`ExecOutput`), so memory and payloads stay small whatever the command prints.

A command that exits non-zero fails the step (and the job) with CommandFailed, whose exit code is
the command's (0-255, else 255); past its deadline it fails with OperationTimeout (124). Either
error carries the step's output, which the engines journal with the failure, so the CLI still
prints the command's output and `jobs list --state failed` finds failed commands. Connection,
authentication and host-key errors fail the step too, with no output. Output streams live through
`ctx.emit` as it arrives; a cancelled job kills the command's remote process tree (Cancelled, 130).
A stream that passes ssh.max_output stops the command too (its tree killed) and fails the step
with OutputCapped (exit 1), which carries the step's output (`output_capped`, the streams as the
files kept them) as a timed-out command's error does: stdout.txt and stderr.txt are kept as they
are (the capped one holds its first max_output bytes) and enter the manifest; exit_code.txt and
result.json are not written (the command has no exit code of its own). The check is capped too
(its output kept nowhere): past ssh.max_output it is stopped and fails the step (exit 1).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from win_automation.definition import Step, StepContext, Workflow
from win_automation.errors import Cancelled, CommandFailed, OperationTimeout, Skipped
from win_automation.operations.command_result import CommandResult, Shell, cli_exit_code, describe_exit_code
from win_automation.operations.output_stream import Capped, Discard, OutputCapped
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
    characters (flagged `*_truncated`); the whole text is in the job's stdout.txt/stderr.txt.
    `output_capped`: a stream passed ssh.max_output, and the command was stopped (exit code 1,
    the CLI's: the command has none of its own); the streams are what the files kept."""

    output_capped: bool = False

    @classmethod
    def of(cls, result: CommandResult) -> ExecOutput:
        fields = result.model_dump()
        for stream in ("stdout", "stderr"):
            text = fields[stream]
            fields[f"{stream}_truncated"] = fields[f"{stream}_truncated"] or len(text) > OUTPUT_PREVIEW_CHARS
            fields[stream] = text[-OUTPUT_PREVIEW_CHARS:]
        return cls(**fields)


def check(inp: SshExecInput, ctx: StepContext) -> CheckOutput:
    if inp.check is None:
        return CheckOutput(checked=False, passed=False)
    limit = ctx.config.ssh.max_output

    def capped(stream: str) -> Capped:
        # its output is kept nowhere, but a check that prints without end (`yes`) must not run
        # on to its deadline: it is capped as the command is
        return Capped(
            Discard(),
            limit,
            stream=f"the idempotency check's {stream}",
            name=None,
            stopped="the check was stopped (the command did not run)",
        )

    files = (capped("stdout"), capped("stderr"))
    result = ctx.vm.run(inp.check, shell=inp.shell, timeout=inp.timeout_seconds, live=False, files=files)
    if result.cancelled:
        raise Cancelled("cancelled while the idempotency check ran; its remote process tree was killed")
    ctx.log.info("idempotency check ran", extra={"op": "ssh.check", "exit_code": result.exit_code})
    return CheckOutput(checked=True, passed=result.ok, exit_code=result.exit_code)


def execute(inp: SshExecInput, ctx: StepContext) -> ExecOutput:
    with ctx.artifacts.batch():  # its four files enter the manifest at once (one write, one sync)
        return _execute(inp, ctx)


def _execute(inp: SshExecInput, ctx: StepContext) -> ExecOutput:
    display = inp.display or inp.command
    if ctx.parent("check", CheckOutput).passed:
        ctx.log.info("check passed: command skipped", extra={"op": "ssh.exec"})
        skipped = skipped_result(display, inp.shell)
        write_artifacts(ctx, skipped)
        raise Skipped(f"skipped: the check `{inp.check}` exited 0", result=ExecOutput.of(skipped))
    timeout = inp.timeout_seconds or ctx.config.ssh.command_timeout
    limit = ctx.config.ssh.max_output
    capped: OutputCapped | None = None
    with ctx.artifacts.open("ssh", "stdout.txt") as out, ctx.artifacts.open("ssh", "stderr.txt") as err:
        files = (
            Capped(out, limit, stream="stdout", name="stdout.txt"),
            Capped(err, limit, stream="stderr", name="stderr.txt"),
        )
        try:
            if inp.shell == "powershell":
                result = ctx.vm.powershell(
                    inp.command, args=tuple(inp.args), timeout=timeout, display=display, files=files
                )
            else:
                result = ctx.vm.run(inp.command, shell="cmd", timeout=timeout, files=files)
        except OutputCapped as exc:
            capped = exc  # raised once the files are closed: a block that raises discards them
    if capped is not None:
        # the step's output as a timed-out command's: journaled with the failure, so the CLI
        # prints it (--json) and names the job; the streams are what stdout.txt/stderr.txt kept
        assert capped.streams is not None  # operations.ssh sets them
        update = {"output_capped": True, "exit_code": capped.exit_code, "cancelled": False}
        capped.result = ExecOutput.of(capped.streams).model_copy(update=update)
        raise capped
    output = ExecOutput.of(result)
    write_result(ctx, output)
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
    """All four artifacts of a result held whole in memory (a skipped command's)."""
    ctx.artifacts.write_text("ssh", "stdout.txt", result.stdout)
    ctx.artifacts.write_text("ssh", "stderr.txt", result.stderr)
    write_result(ctx, ExecOutput.of(result))


def write_result(ctx: StepContext, output: ExecOutput) -> None:
    """exit_code.txt and result.json: the result with each stream's tail only (the whole streams
    are stdout.txt and stderr.txt, never stored twice)."""
    ctx.artifacts.write_text("ssh", "exit_code.txt", f"{output.exit_code}\n")
    ctx.artifacts.write_text("ssh", "result.json", json.dumps(output.model_dump(), indent=2) + "\n")


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
