"""`win-automation run WORKFLOW [--input JSON] [--json] [--metrics]`: run any workflow as a job.

The input is validated against the workflow's model before any job is recorded (a bad field is
one line naming it, exit 2). The job runs on the embedded local engine in this process, or on
Hatchet (`--engine`, see win_automation.cli.engine_option; `--no-wait` returns the run id); its
outcome is printed (a step table, or `--json`) and the exit code says how it ended: 0 succeeded,
the failing step's code when it failed (1, or e.g. 3 when the VM was unreachable), 130 when it
was cancelled or interrupted. Ctrl-C and SIGTERM record the job `interrupted`, resumable with
`jobs resume`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from win_automation.cli.engine_option import engine_option, no_wait_option, run_job
from win_automation.cli.output import error, print_json, print_table
from win_automation.cli.state import state

if TYPE_CHECKING:
    from win_automation.config import Config
    from win_automation.engines.local import JobOutcome


@contextmanager
def metrics_for(config: Config, enabled: bool, interval: str | None) -> Iterator[None]:
    """Run the block with the metrics emitter on when `--metrics` was given."""
    from win_automation import metrics
    from win_automation.cli.parse import duration_option

    seconds = config.metrics.interval
    if interval is not None:
        seconds = duration_option(interval, "--metrics-interval", positive=True)
    with metrics.emitting(seconds, config.metrics.path, enabled=enabled):
        yield


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the engine records the job interrupted before exiting."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(outcome: JobOutcome, config: Config, as_json: bool) -> None:
    """Print the outcome and exit with its code (a failure ends with the one-line error)."""
    from win_automation.jobs.journal import Journal

    with Journal.open(config.data.dir, recover=False) as journal:
        steps = journal.steps(outcome.job_id)
    folder = config.artifacts.out_dir / outcome.job_id
    artifacts_dir = str(folder) if (folder / "manifest.json").exists() else None
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


def run(
    ctx: typer.Context,
    workflow: str = typer.Argument(..., help="The workflow to run, e.g. ping."),
    input: str | None = typer.Option(None, "--input", help="The workflow's input as a JSON object."),
    input_file: Path | None = typer.Option(
        None, "--input-file", help="Read the input JSON from this file.", dir_okay=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    metrics: bool = typer.Option(False, "--metrics", help="Emit metric lines while the job runs."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="How often to emit metrics (e.g. 30s); default metrics.interval."
    ),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Run a workflow as a job (on Hatchet when a token is set, else here) and wait for its end."""
    from win_automation.engines.local import LocalEngine
    from win_automation.errors import UsageError
    from workflows import get_workflow

    definition = get_workflow(workflow)
    if input is not None and input_file is not None:
        raise UsageError("--input and --input-file: give one or the other")
    if input_file is not None:
        try:
            input = input_file.read_text()
        except OSError as exc:
            raise UsageError(f"--input-file: cannot read {input_file}: {exc.strerror}") from None
    model = definition.parse_input(input, name="--input-file" if input_file else "--input")
    config = state(ctx).config()

    def run_local() -> JobOutcome:
        with interruptible():
            local = LocalEngine(config)
            try:
                return local.run(definition, model)
            finally:
                local.close()

    with metrics_for(config, metrics, metrics_interval):
        run_job(
            config,
            definition,
            model,
            engine=engine,
            no_wait=no_wait,
            as_json=as_json,
            run_local=run_local,
            report=lambda outcome: report(outcome, config, as_json),
        )
