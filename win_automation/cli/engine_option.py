"""`--engine hatchet|local` and `--no-wait`, shared by every job command.

Without `--engine` the engine is hatchet when a Hatchet token is configured, else local. On
Hatchet a job command triggers a run, prints each step's progress on stderr, waits for the end and
exits with the job's code, like the local engine; `--no-wait` prints the job id and the run id and
returns at once. `jobs show`/`jobs cancel` use `sync_hatchet_job`/`cancel_hatchet_job` for jobs
whose record says `engine=hatchet`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from win_automation.cli.output import print_json

if TYPE_CHECKING:
    from pydantic import BaseModel

    from win_automation.config import Config
    from win_automation.definition import Workflow
    from win_automation.engines.outcome import JobOutcome
    from win_automation.jobs.journal import Journal
    from win_automation.jobs.records import JobRecord

ENGINE_HELP = (
    "Where the job runs: hatchet (durable, on a worker) or local; default hatchet when a token is set."
)


def engine_option() -> str | None:
    return typer.Option(None, "--engine", help=ENGINE_HELP, metavar="hatchet|local")  # type: ignore[no-any-return]


def no_wait_option() -> bool:
    return typer.Option(  # type: ignore[no-any-return]
        False, "--no-wait", help="Hatchet only: print the job and run ids and return without waiting."
    )


def run_job(
    config: Config,
    workflow: Workflow,
    model: BaseModel,
    *,
    engine: str | None,
    no_wait: bool,
    as_json: bool,
    run_local: Callable[[], JobOutcome],
    report: Callable[[JobOutcome], None],
) -> None:
    """Run `workflow` on the chosen engine and report its outcome (or the ids with --no-wait)."""
    from win_automation.config.hatchet_token import engine_choice
    from win_automation.errors import UsageError

    chosen = engine_choice(config, engine)
    if chosen == "local":
        if no_wait:
            raise UsageError(
                "--no-wait: only with the hatchet engine (the local engine runs in this process)"
            )
        report(run_local())
        return
    from win_automation.config.hatchet_token import token_claims

    token_claims(config)  # a clear ConfigError before the slow SDK import
    from win_automation.engines.hatchet.client import HatchetRuns

    runs = HatchetRuns(config)
    try:
        job_id, run_id = runs.submit(workflow, model)
        if no_wait:
            if as_json:
                print_json({"job_id": job_id, "run_id": run_id, "engine": "hatchet"})
            else:
                typer.echo(f"job {job_id} queued on Hatchet as run {run_id}")
            return
        if not as_json:
            typer.echo(f"job {job_id}: Hatchet run {run_id}", err=True)
        try:
            outcome = runs.wait(
                workflow,
                job_id,
                run_id,
                progress=lambda step, state: None if as_json else typer.echo(f"  {step}: {state}", err=True),
            )
        except KeyboardInterrupt:
            from win_automation.errors import Cancelled

            typer.echo(f"stopped waiting; job {job_id} goes on as Hatchet run {run_id}", err=True)
            raise typer.Exit(Cancelled.exit_code) from None
    finally:
        runs.close()
    report(outcome)


def sync_hatchet_job(config: Config, journal: Journal, job: JobRecord) -> JobRecord:
    """Bring an active Hatchet job's record up to the engine's view (best effort: an engine that
    cannot be reached leaves the record as it is, with a note on stderr)."""
    from win_automation.errors import WinAutomationError
    from win_automation.jobs.state import ACTIVE

    if (
        job.engine != "hatchet"
        or job.state not in ACTIVE
        or not job.external_id
        or config.hatchet.token is None
    ):
        return job
    from win_automation.engines.hatchet.client import HatchetRuns
    from workflows import all_workflows

    workflow = all_workflows().get(job.workflow)
    if workflow is None:
        return job
    try:
        HatchetRuns(config, journal).sync(workflow, job.job_id, job.external_id)
    except WinAutomationError as exc:
        typer.echo(f"note: could not refresh from Hatchet: {exc}", err=True)
    return journal.get_job(job.job_id)


def cancel_hatchet_job(config: Config, journal: Journal, job: JobRecord, patience: float) -> JobRecord:
    """Cancel the Hatchet run of `job` and wait up to `patience` seconds for the engine to end it."""
    from win_automation.engines.hatchet.client import HatchetRuns
    from win_automation.errors import UsageError
    from workflows import all_workflows

    if not job.external_id:
        raise UsageError(f"job {job.job_id} has no Hatchet run id recorded; nothing to cancel there")
    runs = HatchetRuns(config, journal)
    runs.cancel(job.external_id)
    workflow = all_workflows().get(job.workflow)
    if workflow is not None:
        runs.sync(workflow, job.job_id, job.external_id, patience=patience)
    return journal.get_job(job.job_id)
