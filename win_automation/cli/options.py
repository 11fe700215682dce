"""Options shared by the job commands: `--engine`, `--no-wait`, `--json`, `--metrics`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from win_automation.config import Config

ENGINE_HELP = (
    "Where the job runs: hatchet (durable, on a worker) or local; default hatchet when a token is set."
)


def engine_option() -> str | None:
    return typer.Option(None, "--engine", help=ENGINE_HELP, metavar="hatchet|local")  # type: ignore[no-any-return]


def no_wait_option() -> bool:
    return typer.Option(  # type: ignore[no-any-return]
        False, "--no-wait", help="Hatchet only: print the job and run ids and return without waiting."
    )


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
