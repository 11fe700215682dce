"""`win-automation run WORKFLOW [--input JSON] [--json] [--metrics]`: run any workflow as a job.

The input is validated against the workflow's model before any job is recorded (a bad field is
one line naming it, exit 2). The job runs on the embedded local engine in this process, or on
Hatchet (`--engine`, see win_automation.engines.dispatch; `--no-wait` returns the run id); its
outcome is printed (a step table, or `--json`) and the exit code says how it ended: 0 succeeded,
the failing step's code when it failed (1, or e.g. 3 when the VM was unreachable), 130 when it
was cancelled or interrupted. Ctrl-C and SIGTERM record the job `interrupted`, resumable with
`jobs resume`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from win_automation.cli.options import engine_option, metrics_for, no_wait_option
from win_automation.cli.output import error, print_json, print_table
from win_automation.cli.state import state

if TYPE_CHECKING:
    from win_automation.config import Config
    from win_automation.definition import Workflow
    from win_automation.engines.outcome import JobOutcome


def report(outcome: JobOutcome, config: Config, as_json: bool) -> None:
    """Print the outcome and exit with its code (a failure ends with the one-line error)."""
    from win_automation.engines.dispatch import show_job

    view = show_job(config, outcome.job_id)
    steps = view.steps
    folder = outcome.artifacts_dir or (Path(view.job.artifacts_dir) if view.job.artifacts_dir else None)
    artifacts_dir = str(folder) if folder and (folder / "manifest.json").exists() else None
    if as_json:
        print_json({**outcome.as_dict(), "artifacts_dir": artifacts_dir, "exit_code": outcome.exit_code})
    else:
        rows = [
            (s.name, s.state.value, s.attempts, _ms(s.started_at, s.finished_at), s.error or "")
            for s in steps
        ]
        print_table(
            f"job {outcome.job_id} ({outcome.workflow}): {outcome.state.value}",
            ["step", "state", "attempts", "duration", "error"],
            rows,
        )
        if artifacts_dir:
            typer.echo(f"artifacts: {artifacts_dir}")
    if outcome.exit_code:
        from win_automation.log import redact

        error(redact(f"job {outcome.job_id} {outcome.state.value}: {outcome.error or 'no error recorded'}"))
        raise typer.Exit(outcome.exit_code)


def _ms(start: float | None, end: float | None) -> str:
    return "" if start is None or end is None else f"{(end - start) * 1000:.0f} ms"


def progress_printer(as_json: bool):  # type: ignore[no-untyped-def]
    """Hatchet progress lines on stderr (none with --json)."""
    return None if as_json else (lambda step, state: typer.echo(f"  {step}: {state}", err=True))


def print_submitted(job_id: str, run_id: str, as_json: bool) -> None:
    if as_json:
        print_json({"job_id": job_id, "run_id": run_id, "engine": "hatchet"})
    else:
        typer.echo(f"job {job_id} queued on Hatchet as run {run_id}")


def start(
    config: Config,
    workflow: Workflow,
    model: object,
    *,
    engine: str | None,
    no_wait: bool,
    as_json: bool,
    on_output: object = None,
    snapshot: str | None = None,
) -> JobOutcome | None:
    """Run (or with --no-wait, submit) a job; the outcome, or None when submitted."""
    from pydantic import BaseModel

    from win_automation.engines import dispatch

    assert isinstance(model, BaseModel)
    if no_wait:
        if snapshot is not None:
            from win_automation.errors import UsageError

            raise UsageError("--from-snapshot: not with --no-wait (the local engine runs the job here)")
        submitted = dispatch.submit_job(config, workflow, model, engine=engine)
        print_submitted(submitted.job_id, submitted.run_id, as_json)
        return None
    from win_automation.cli import server
    from win_automation.operations.vm import share_connections

    share_connections()  # a job command's remote commands go through the VM's warm helper
    server.start_later(config.ssh.persist)  # and the calls after this one fork a warm CLI process
    return dispatch.run_job(
        config,
        workflow,
        model,
        engine=engine,
        on_output=on_output,  # type: ignore[arg-type]
        on_progress=progress_printer(as_json),
        snapshot=snapshot,
    )


def run(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="The workflow to run, e.g. ping."),
    input: str | None = typer.Option(None, "--input", help="The workflow's input as a JSON object."),
    input_file: Path | None = typer.Option(
        None, "--input-file", help="Read the input JSON from this file.", readable=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    metrics: bool = typer.Option(False, "--metrics", help="Emit metric lines while the job runs."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="How often to emit metrics (e.g. 30s); default metrics.interval."
    ),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
    from_snapshot: str | None = typer.Option(
        None,
        "--from-snapshot",
        help="Load this VM snapshot (QMP, vm.qmp_socket) before the job starts: a clean-state run.",
    ),
) -> None:
    """Run a workflow as a job (on Hatchet when a token is set, else here) and wait for its end."""
    from win_automation.errors import UsageError
    from workflows import get_workflow

    definition = get_workflow(workflow)
    if input is not None and input_file is not None:
        raise UsageError("--input and --input-file: give one or the other")
    if input_file is not None:
        from win_automation import jsontext

        try:
            input = jsontext.read_text(input_file)
        except ValueError as exc:
            raise UsageError(f"--input-file {input_file}: {exc}") from None
    model = definition.parse_input(input, name="--input-file" if input_file else "--input")
    config = state(ctx).config()
    with metrics_for(config, metrics, metrics_interval):
        outcome = start(
            config,
            definition,
            model,
            engine=engine,
            no_wait=no_wait,
            as_json=as_json,
            snapshot=from_snapshot,
        )
    if outcome is not None:
        report(outcome, config, as_json)
