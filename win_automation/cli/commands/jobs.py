"""`win-automation jobs list|show|cancel|resume`: the journal, as people and programs read it.

Every JOB_ID is validated (`win_automation.jobs.ids`) before the journal or any folder is opened:
a path such as `../x` is a usage error, exit 2. Opening the journal marks interrupted the jobs
whose owner process is gone, so `jobs list` never shows a dead job as running.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state
from win_automation.durations import rfc3339

if TYPE_CHECKING:
    from win_automation.jobs.records import JobRecord, StepRecord

app = typer.Typer(help="List, inspect, cancel and resume jobs.", no_args_is_help=True)


def when(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc3339(timestamp)


def duration_ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else round((end - start) * 1000)


def parse_since(value: str, now: float) -> float:
    """`--since 2h` (a duration ago) or an ISO date/time (UTC when it has no zone)."""
    from win_automation.durations import parse_duration
    from win_automation.errors import UsageError

    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since: {value!r} is neither a duration (30m, 2h, 7d) nor a date (2026-11-22T10:00:00Z)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def job_dict(job: JobRecord, steps: list[StepRecord]) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "trace_id": job.trace_id,
        "workflow": job.workflow,
        "engine": job.engine,
        "external_id": job.external_id,
        "state": job.state.value,
        "error": job.error,
        "exit_code": job.error_code,
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "duration_ms": duration_ms(job.started_at, job.finished_at),
        "owner_pid": job.owner_pid,
        "cancel_requested": job.cancel_requested,
        "steps_done": sum(1 for s in steps if s.state.value == "succeeded"),
        "steps_total": len(steps),
    }


def step_dict(step: StepRecord) -> dict[str, Any]:
    return {
        "name": step.name,
        "state": step.state.value,
        "attempts": step.attempts,
        "started_at": when(step.started_at),
        "finished_at": when(step.finished_at),
        "duration_ms": duration_ms(step.started_at, step.finished_at),
        "error": step.error,
        "exit_code": step.error_code,
    }


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    state_: str | None = typer.Option(
        None, "--state", help="Only jobs in this state (queued, running, ...)."
    ),
    type_: str | None = typer.Option(None, "--type", help="Only jobs of this workflow, e.g. ping."),
    since: str | None = typer.Option(None, "--since", help="Only jobs created since: 2h, 7d or a date."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many jobs, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List jobs, newest first."""
    from win_automation.errors import UsageError
    from win_automation.jobs.state import parse_state

    try:
        wanted = parse_state(state_) if state_ is not None else None
    except ValueError as exc:
        raise UsageError(f"--state: {exc}") from None
    from win_automation.engines.dispatch import list_jobs as listed

    cutoff = parse_since(since, time.time()) if since is not None else None
    views = listed(state(ctx).config(), state=wanted, workflow=type_, since=cutoff, limit=limit, note=_note)
    rows = [job_dict(view.job, view.steps) for view in views]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{len(rows)} job(s)",
        ["job id", "workflow", "state", "engine", "created", "duration", "steps", "error"],
        [
            (
                r["job_id"],
                r["workflow"],
                r["state"],
                r["engine"],
                r["created_at"],
                "" if r["duration_ms"] is None else f"{r['duration_ms']} ms",
                f"{r['steps_done']}/{r['steps_total']}",
                r["error"],
            )
            for r in rows
        ],
    )


@app.command()
def show(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job id, as `run` or `jobs list` printed it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a job: its steps with attempts, durations and errors, its artifacts and its events."""
    from win_automation.artifacts.store import read_manifest
    from win_automation.engines.dispatch import show_job
    from win_automation.errors import WinAutomationError

    config = state(ctx).config()
    view = show_job(config, job_id, note=_note)
    job, steps, events = view.job, view.steps, view.events
    from win_automation.artifacts.folders import job_artifacts

    folder = Path(job.artifacts_dir) if job.artifacts_dir else job_artifacts(config, job_id)
    try:
        artifacts = [a.model_dump() for a in read_manifest(folder).artifacts]
    except WinAutomationError:
        artifacts = []
    data = {
        **job_dict(job, steps),
        "artifacts_dir": str(folder) if folder.is_dir() else None,
        "steps": [step_dict(s) for s in steps],
        "artifacts": artifacts,
        "events": [
            {"ts": when(e.ts), "step": e.step, "state": e.state, "attempt": e.attempt, "message": e.message}
            for e in events
        ],
    }
    if as_json:
        print_json(data)
        return
    keys = [
        "job_id",
        "trace_id",
        "workflow",
        "engine",
        "external_id",
        "state",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "owner_pid",
        "artifacts_dir",
    ]
    print_table(f"job {job_id}", ["field", "value"], [(k, data[k]) for k in keys if data[k] is not None])
    print_table(
        "steps",
        ["step", "state", "attempts", "duration", "error"],
        [
            (
                s["name"],
                s["state"],
                s["attempts"],
                "" if s["duration_ms"] is None else f"{s['duration_ms']} ms",
                s["error"],
            )
            for s in data["steps"]
        ],
    )
    if artifacts:
        print_table(
            "artifacts",
            ["type", "path", "bytes", "sha256"],
            [(a["type"], a["path"], a["size_bytes"], a["sha256"]) for a in artifacts],
        )


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The job to cancel."),
    wait: str = typer.Option(
        "10s", "--wait", help="How long to wait for the owner to stop it (0: do not wait)."
    ),
) -> None:
    """Cancel a queued, running or interrupted job; a running one stops at its next step or sooner."""
    from win_automation.cli.parse import duration_option
    from win_automation.engines.dispatch import cancel_job, owner_stopped
    from win_automation.errors import WinAutomationError
    from win_automation.jobs.state import ACTIVE, JobState

    patience = duration_option(wait, "--wait")
    job = cancel_job(state(ctx).config(), job_id, patience)
    run = f" (Hatchet run {job.external_id})" if job.engine == "hatchet" else ""
    if job.state == JobState.CANCELLED:
        typer.echo(f"job {job_id} cancelled{run}")
    elif job.state in ACTIVE:
        owner = f"Hatchet run {job.external_id}" if run else f"owner pid {job.owner_pid}"
        if owner_stopped(job):
            owner += " is stopped (Ctrl-Z or SIGSTOP): the cancel takes effect when it continues"
        typer.echo(f"cancel requested; job {job_id} is still {job.state.value} ({owner})")
    else:
        raise WinAutomationError(f"job {job_id} ended {job.state.value} before the cancel took effect")


@app.command()
def resume(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="The failed or interrupted job to continue."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    metrics: bool = typer.Option(False, "--metrics", help="Emit metric lines while the job runs."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="How often to emit metrics (e.g. 30s); default metrics.interval."
    ),
) -> None:
    """Continue a failed or interrupted job from its first unfinished step (finished steps are not re-run)."""
    from win_automation.cli.commands.run import report
    from win_automation.cli.options import metrics_for
    from win_automation.engines.dispatch import resume_job

    config = state(ctx).config()
    with metrics_for(config, metrics, metrics_interval):
        outcome = resume_job(config, job_id)
    report(outcome, config, as_json)


def _note(text: str) -> None:
    typer.echo(text, err=True)
