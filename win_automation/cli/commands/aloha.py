"""`win-automation aloha run|stop|health`: ShowUI-Aloha GUI tasks on the VM's desktop.

`run` is a job of the `aloha-task` workflow (either engine; a GUI job: one per VM desktop): it
probes the desktop, checks both services, starts the task, follows it to its end and enforces
`--timeout` (then `/stop`, exit 124); its outcome prints like `run`'s. `stop` asks the client to
stop its task; `health` checks the server and the client separately. httpx is imported only
inside the commands.
"""

from __future__ import annotations

from typing import Any

import typer

from win_automation.cli.options import engine_option, metrics_for, no_wait_option
from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

app = typer.Typer(help="ShowUI-Aloha GUI tasks on the VM's desktop: run, stop, health.", no_args_is_help=True)

OPTIONS = {
    "task": "--task",
    "trace_id": "--trace-id",
    "max_steps": "--max-steps",
    "screen": "--screen",
    "timeout_seconds": "--timeout",
}


def _integer(value: str | None, option: str) -> int | None:
    from win_automation.errors import UsageError

    if value is None:
        return None
    try:
        return int(value.strip(), 10)
    except ValueError:
        raise UsageError(f"{option}: must be a whole number, got {value!r}") from None


def _input(payload: dict[str, Any]) -> Any:
    """The validated AlohaTaskInput; a bad value is one UsageError naming its option."""
    from pydantic import ValidationError

    from win_automation.errors import UsageError
    from workflows.aloha_task import AlohaTaskInput

    try:
        return AlohaTaskInput.model_validate({k: v for k, v in payload.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        option = OPTIONS.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else "--task"
        message = first["msg"].removeprefix("Value error, ")
        raise UsageError(f"{option}: {message}") from None


@app.command()
def run(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", metavar="TEXT", help="What to do on the desktop, in words."),
    trace_id: str | None = typer.Option(
        None, "--trace-id", metavar="NAME", help="Demonstration trace for the server."
    ),
    max_steps: str | None = typer.Option(
        None, "--max-steps", metavar="N", help="Most steps the client takes (1-500)."
    ),
    screen: str = typer.Option("0", "--screen", metavar="N", help="The screen to act on (0-15)."),
    timeout: str = typer.Option(
        "30m", "--timeout", metavar="DURATION", help="Deadline; then /stop and exit 124."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    metrics: bool = typer.Option(False, "--metrics", help="Emit metric lines while the job runs."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="How often to emit metrics (e.g. 30s); default metrics.interval."
    ),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Run a GUI task on the VM's desktop as a job and follow it to its end."""
    from win_automation.cli.commands.run import report, start
    from win_automation.cli.parse import duration_option
    from workflows.aloha_task import aloha_task

    model = _input(
        {
            "task": task,
            "trace_id": trace_id,
            "max_steps": _integer(max_steps, "--max-steps"),
            "screen": _integer(screen, "--screen"),
            "timeout_seconds": duration_option(timeout, "--timeout", positive=True),
        }
    )
    config = state(ctx).config()
    with metrics_for(config, metrics, metrics_interval):
        outcome = start(config, aloha_task, model, engine=engine, no_wait=no_wait, as_json=as_json)
    if outcome is not None:
        report(outcome, config, as_json)


@app.command()
def stop(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Ask the Aloha client to stop its task (it stops between two steps)."""
    from win_automation.operations.aloha import aloha_stop

    was_running = aloha_stop(state(ctx).config())
    if as_json:
        print_json({"stopped": was_running})
    else:
        typer.echo(
            "stop sent; the task stops after its current step" if was_running else "no task was running"
        )


@app.command()
def health(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check the Aloha server and client, each with its latency and what was wrong."""
    from win_automation.operations.aloha import aloha_health

    reports = aloha_health(state(ctx).config())
    if as_json:
        print_json({"ok": all(r.ok for r in reports), "services": [r.model_dump() for r in reports]})
    else:
        print_table(
            "aloha health",
            ["service", "url", "ok", "latency", "status", "problem"],
            [
                (
                    r.service,
                    r.url,
                    "yes" if r.ok else "no",
                    "" if r.latency_ms is None else f"{r.latency_ms} ms",
                    r.status or "",
                    r.problem or "",
                )
                for r in reports
            ],
        )
    codes = [r.exit_code for r in reports if not r.ok]
    if codes:
        raise typer.Exit(max(codes))
