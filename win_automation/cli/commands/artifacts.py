"""`win-automation artifacts list|fetch|verify|prune`: a job's evidence folder and its manifest.

The --job id is validated before any path is built from it (`../x` is exit 2). `fetch` and
`verify` re-hash every file against the manifest and fail (exit 1) naming each file that does
not match; `fetch` writes a file under its final name only once it matched, and the manifest
last. `prune` deletes job folders older than the retention (default `artifacts.retention_days`),
never those of jobs still queued or running, and the stale `.tmp-*` files (left by a process
killed mid-write) in the folders that remain.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

app = typer.Typer(help="List, fetch, verify and prune job artifacts.", no_args_is_help=True)

JOB = typer.Option(..., "--job", help="The job id.")


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def local_folder(ctx: typer.Context, job: str) -> Path:
    """The job's folder as the journal recorded it (absolute), found from any directory."""
    from win_automation.artifacts.folders import job_artifacts
    from win_automation.jobs.ids import validate_job_id

    validate_job_id(job, name="--job")
    return job_artifacts(state(ctx).config(), job)


@app.command("list")
def list_artifacts(
    ctx: typer.Context, job: str = JOB, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """List a job's artifacts as its manifest records them."""
    from win_automation.artifacts.store import read_manifest

    folder = local_folder(ctx, job)
    manifest = read_manifest(folder)
    if as_json:
        print_json({"folder": str(folder), **manifest.model_dump()})
        return
    print_table(
        f"{len(manifest.artifacts)} artifact(s) of job {job} in {folder}",
        ["type", "path", "size", "sha256"],
        [(a.type, a.path, human_bytes(a.size_bytes), a.sha256) for a in manifest.artifacts],
    )


@app.command()
def fetch(
    ctx: typer.Context,
    job: str = JOB,
    out: Path = typer.Option(
        ..., "--out", help="Folder to copy into (the files land in OUT/JOB_ID/).", file_okay=False
    ),
    source: str = typer.Option(
        "auto",
        "--from",
        help="local (artifacts.out_dir), vm (artifacts.remote_dir over SFTP), or auto: local when present.",
        metavar="auto|local|vm",
    ),
) -> None:
    """Copy a job's artifacts into OUT/JOB_ID/, checking every size and sha256 against the manifest."""
    from win_automation.artifacts.copying import copy_verified
    from win_automation.artifacts.store import raise_mismatches
    from win_automation.operations.artifacts import artifact_source

    local_folder(ctx, job)  # validates the id before anything is opened
    origin, where = artifact_source(state(ctx).config(), job, source)
    from win_automation.errors import StorageError

    try:
        manifest = origin.manifest()
        total = sum(a.size_bytes for a in manifest.artifacts)
        target = out / job
        with progress_bar(f"fetch {job}", total) as advance:
            try:
                manifest, mismatches = copy_verified(origin, target, advance)
            except StorageError as exc:
                raise StorageError(f"--out {out}: {exc}; choose a folder you can write") from None
    finally:
        origin.close()  # the VM's SFTP session
    raise_mismatches(f"fetch {job} from {where}", mismatches)
    typer.echo(
        f"fetched {len(manifest.artifacts)} artifact(s), {human_bytes(total)}, verified, into {target}"
    )


@app.command()
def verify(ctx: typer.Context, job: str = JOB) -> None:
    """Re-hash a job's artifact folder against its manifest; exit 1 naming each file that differs."""
    from win_automation.artifacts.store import read_manifest, verify_folder

    folder = local_folder(ctx, job)
    total = sum(a.size_bytes for a in read_manifest(folder).artifacts)
    with progress_bar(f"verify {job}", total) as advance:
        manifest = verify_folder(folder, advance)
    typer.echo(
        f"{len(manifest.artifacts)} artifact(s) of job {job} match the manifest ({human_bytes(total)})"
    )


@app.command()
def prune(
    ctx: typer.Context,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Age beyond which job folders go (e.g. 7d); default artifacts.retention_days.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Apply retention: delete job folders older than the retention period (never active jobs)."""
    from win_automation.artifacts.retention import apply_retention, remove_partials
    from win_automation.cli.parse import duration_option

    seconds = None if older_than is None else duration_option(older_than, "--older-than")
    config = state(ctx).config()
    pruned = apply_retention(config, older_than_seconds=seconds, dry_run=dry_run)
    partials = remove_partials(config, dry_run=dry_run)
    freed = sum(p.size_bytes for p in pruned)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "pruned": [p.job_id for p in pruned],
                "bytes": freed,
                "partial_files": [str(p) for p in partials],
            }
        )
        return
    verb = "would prune" if dry_run else "pruned"
    for result in pruned:
        typer.echo(f"{verb} {result.job_id} ({human_bytes(result.size_bytes)})")
    typer.echo(f"{verb} {len(pruned)} job folder(s), {human_bytes(freed)}")
    if partials:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {len(partials)} stale partial file(s)")
