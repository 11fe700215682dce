"""Dispatch: every job command's one call below the CLI, on whichever engine runs the job.

    outcome = run_job(config, workflow, model, engine=None, on_output=print_live, on_progress=show)
    submitted = submit_job(config, workflow, model, engine="hatchet")       # --no-wait
    outcome = resume_job(config, job_id)
    job = cancel_job(config, job_id, patience=10.0)
    views = list_jobs(config, state=None, workflow=None, since=None, limit=50)
    view = show_job(config, job_id)

The engine is `hatchet` when a Hatchet token is configured, else `local`, unless `engine` names
one. On the local engine the job runs in this process; `on_output(stream, text)` gets the steps'
live output (`ctx.emit`). On Hatchet the run is triggered, followed (`on_progress(step, state)`)
and waited for; its output arrives with the result. SIGTERM and SIGHUP are Ctrl-C for every job
command (win_automation.interrupts; one the caller ignored stays ignored): a
local job is recorded `interrupted` (resumable), a Hatchet wait stops while the run goes on;
both raise Cancelled (exit 130). Jobs recorded with `engine=hatchet` are refreshed from the
engine before they are shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from win_automation.config import Config
from win_automation.definition import Workflow
from win_automation.engines.outcome import JobOutcome
from win_automation.errors import Cancelled, ServiceRefused, UsageError, WinAutomationError
from win_automation.interrupts import interruptible
from win_automation.jobs.ids import validate_job_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.records import EventRecord, JobRecord, StepRecord
from win_automation.jobs.state import ACTIVE, JobState
from win_automation.operations.vm import Emit

if TYPE_CHECKING:
    from win_automation.engines.hatchet.runs import HatchetRuns

Engine = Literal["local", "hatchet"]
Progress = Callable[[str, str], None]
Note = Callable[[str], None]


def _quiet(text: str) -> None:
    return None


def engine_choice(config: Config, requested: str | None) -> Engine:
    """`--engine` if given (validated), else hatchet when a token is configured, else local."""
    if requested is None:
        return "hatchet" if config.hatchet.token is not None else "local"
    if requested not in ("local", "hatchet"):
        raise UsageError(f"--engine: must be one of local, hatchet, got {requested!r}")
    return "hatchet" if requested == "hatchet" else "local"


def _hatchet(config: Config, journal: Journal | None = None) -> HatchetRuns:
    from win_automation.config.hatchet_token import token_claims

    token_claims(config)  # a clear ConfigError before the slow SDK import
    from win_automation.engines.hatchet.runs import HatchetRuns

    return HatchetRuns(config, journal)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    run_id: str
    engine: str = "hatchet"


def submit_job(
    config: Config, workflow: Workflow, model: BaseModel, *, engine: str | None = None
) -> Submitted:
    """Queue a job without waiting for it: only Hatchet can run a job without this process."""
    if engine_choice(config, engine) == "local":
        raise UsageError("--no-wait: only with the hatchet engine (the local engine runs in this process)")
    runs = _hatchet(config)
    try:
        return Submitted(*runs.submit(workflow, model))
    finally:
        runs.close()


def run_job(
    config: Config,
    workflow: Workflow,
    model: BaseModel,
    *,
    engine: str | None = None,
    on_output: Emit | None = None,
    on_progress: Progress | None = None,
    snapshot: str | None = None,
) -> JobOutcome:
    """Run `workflow` as a job on the chosen engine and wait for its end; `snapshot` (local engine
    only) is loaded into the VM before the job's first step, for a clean-state run."""
    chosen = engine_choice(config, engine)
    if snapshot is not None:
        if chosen != "local":
            raise UsageError("--from-snapshot: only with the local engine (it loads this host's VM)")
        from win_automation.operations.qemu import Qemu

        Qemu(config).require_snapshot(snapshot)  # a clear error before any job is recorded
    if chosen == "local":
        from win_automation.engines.local import LocalEngine

        with interruptible():
            local = LocalEngine(config)
            try:
                return local.run(workflow, model, emit=on_output, snapshot=snapshot)
            finally:
                local.close()
    progress = on_progress or (lambda step, state: None)
    runs = _hatchet(config)
    try:
        job_id, run_id = runs.submit(workflow, model)
        progress("*", f"job {job_id}: Hatchet run {run_id}")
        try:
            with interruptible():
                return runs.wait(workflow, job_id, run_id, progress=progress)
        except KeyboardInterrupt:
            raise Cancelled(f"stopped waiting; job {job_id} goes on as Hatchet run {run_id}") from None
    finally:
        runs.close()


def resume_job(config: Config, job_id: str, *, on_output: Emit | None = None) -> JobOutcome:
    """Continue a failed or interrupted local job from its first unfinished step."""
    from win_automation.engines.local import LocalEngine
    from workflows import all_workflows

    validate_job_id(job_id)
    with interruptible():
        local = LocalEngine(config)
        try:
            return local.resume(job_id, all_workflows(), emit=on_output)
        finally:
            local.close()


class _Refresher:
    """Brings active Hatchet jobs' records up to the engine's view (best effort, one client for
    all of them): an engine that cannot be reached leaves them as they are, with one note, and
    is not asked again for the rest (a stalled engine would hold each job's refresh); an answer
    about one job it cannot use is noted for that job, and the others are still refreshed."""

    def __init__(self, config: Config, journal: Journal, note: Note) -> None:
        self.config, self.journal, self.note = config, journal, note
        self.runs: HatchetRuns | None = None
        self.failed = False

    def __call__(self, job: JobRecord) -> JobRecord:
        if (
            self.failed
            or job.engine != "hatchet"
            or self.journal.read_only
            or job.state not in ACTIVE
            or not job.external_id
            or self.config.hatchet.token is None
        ):
            return job
        from workflows import all_workflows

        workflow = all_workflows().get(job.workflow)
        if workflow is None:
            return job
        try:
            if self.runs is None:
                self.runs = _hatchet(self.config, self.journal)
            self.runs.sync(workflow, job.job_id, job.external_id)
        except ServiceRefused as exc:  # an answer about this job it cannot use: the others may do
            self.note(f"note: could not refresh job {job.job_id} from Hatchet: {exc}")
        except WinAutomationError as exc:
            self.failed = True
            self.note(f"note: could not refresh from Hatchet: {exc}")
        return self.journal.get_job(job.job_id)


@dataclass(frozen=True)
class JobView:
    job: JobRecord
    steps: list[StepRecord]
    events: list[EventRecord]


def list_jobs(
    config: Config,
    *,
    state: JobState | None = None,
    workflow: str | None = None,
    since: float | None = None,
    limit: int = 50,
    note: Note = _quiet,
) -> list[JobView]:
    """Jobs newest first, each with its steps (Hatchet jobs refreshed from the engine)."""
    with _to_read(config, note) as journal:
        jobs = journal.list_jobs(state=state, workflow=workflow, since=since, limit=limit)
        refresh = _Refresher(config, journal, note)
        jobs = [refresh(job) for job in jobs]
        return [JobView(job, journal.steps(job.job_id), []) for job in jobs]


def show_job(config: Config, job_id: str, *, note: Note = _quiet) -> JobView:
    """One job with its steps and events (refreshed from Hatchet when it runs there)."""
    validate_job_id(job_id)
    with _to_read(config, note) as journal:
        job = _Refresher(config, journal, note)(journal.get_job(job_id))
        return JobView(job, journal.steps(job_id), journal.events(job_id))


def _to_read(config: Config, note: Note) -> Journal:
    """The journal for reading; one that cannot be written is read as it is, with a note."""
    journal, refused = Journal.open_to_read(config.data.dir)
    if refused is not None:
        note(f"note: read-only, as it is: {refused}")
    return journal


def cancel_job(config: Config, job_id: str, patience: float) -> JobRecord:
    """Cancel a queued, running or interrupted job and wait up to `patience` s for it to end.
    A local job's owner stops its running step (a remote command's process tree is killed);
    a Hatchet job's run is cancelled on the engine. Returns the job as it then is."""
    validate_job_id(job_id)
    with Journal.open(config.data.dir) as journal:
        job = journal.get_job(job_id)
        if job.state not in ACTIVE and job.state != JobState.INTERRUPTED:
            raise WinAutomationError(f"job {job_id} is already {job.state.value}; nothing to cancel")
        if job.engine == "hatchet":
            return _cancel_hatchet(config, journal, job, patience)
        job = journal.request_cancel(job_id)
        deadline = time.monotonic() + patience
        while job.state in ACTIVE and time.monotonic() < deadline and not owner_stopped(job):
            time.sleep(0.05)
            journal.recover_interrupted()
            job = journal.get_job(job_id)
        if job.state == JobState.INTERRUPTED:
            job = journal.request_cancel(job_id)  # its owner died meanwhile
        return job


def owner_stopped(job: JobRecord) -> bool:
    """True when the local job's owner is a process of this host that is stopped (Ctrl-Z,
    SIGSTOP): it sees a cancel only once it is continued."""
    import socket

    from win_automation.jobs.owners import process_stopped

    if job.engine != "local" or job.owner_pid is None or job.owner_host != socket.gethostname():
        return False
    return process_stopped(job.owner_pid, job.owner_start)


def _cancel_hatchet(config: Config, journal: Journal, job: JobRecord, patience: float) -> JobRecord:
    from workflows import all_workflows

    if not job.external_id:
        raise UsageError(f"job {job.job_id} has no Hatchet run id recorded; nothing to cancel there")
    runs = _hatchet(config, journal)
    runs.cancel(job.external_id)
    workflow = all_workflows().get(job.workflow)
    if workflow is not None:
        runs.sync(workflow, job.job_id, job.external_id, patience=patience)
    return journal.get_job(job.job_id)
