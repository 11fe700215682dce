"""`win-automation worker`: serve the project's workflows to a Hatchet engine.

hatchet_sdk is imported inside the command only (about 2.5 s), so `--help` stays fast.
"""

from __future__ import annotations

import logging
import os
import re

import typer

from win_automation.cli.output import error
from win_automation.cli.parse import duration_option, utf8
from win_automation.cli.state import state
from win_automation.errors import ConfigError, UsageError

_LABEL = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")
NO_HATCHET = (
    "the worker needs a Hatchet engine: set HATCHET_CLIENT_TOKEN (a token from `hatchet-admin token"
    " create`) and HATCHET_CLIENT_HOST_PORT (or hatchet.* in the config file); job commands work"
    " without Hatchet on the local engine (--engine local)"
)


def parse_labels(values: list[str]) -> dict[str, str]:
    """`key=value` options as a mapping; UsageError naming the bad one."""
    labels: dict[str, str] = {}
    for value in values:
        if not utf8(value):  # bytes from argv that are not UTF-8: Hatchet could not carry them
            raise UsageError(f"--label {value}: not valid UTF-8")
        match = _LABEL.match(value)
        if match is None:
            raise UsageError(f"--label: expected key=value (key of letters, digits, _ . -), got {value!r}")
        labels[match.group(1)] = match.group(2)
    return labels


def worker(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--name", help="Worker name (default win-automation-HOSTNAME)."),
    slots: int = typer.Option(10, "--slots", min=1, max=1000, help="Steps this worker runs at once."),
    label: list[str] = typer.Option(
        [], "--label", help="A worker label key=value for routing (e.g. vm=win11); repeatable."
    ),
    grace: str = typer.Option(
        "30s", "--grace", help="On SIGTERM/SIGINT, how long running steps may finish before exit."
    ),
    metrics_on: bool = typer.Option(False, "--metrics", help="Emit metric lines while running."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="Time between metric rounds (default metrics.interval)."
    ),
) -> None:
    """Register every workflow with Hatchet and run their steps until SIGTERM/SIGINT drains it."""
    cli = state(ctx)
    config = cli.config()
    labels = parse_labels(label)
    if name is not None and not utf8(name):
        raise UsageError(f"--name {name}: not valid UTF-8")
    grace_s = duration_option(grace, "--grace", positive=True)
    interval: float | None = None
    if metrics_on:
        interval = (
            config.metrics.interval
            if metrics_interval is None
            else duration_option(metrics_interval, "--metrics-interval", positive=True)
        )
    if config.hatchet.token is None:
        raise ConfigError(NO_HATCHET)
    from win_automation.config.hatchet_token import token_claims

    token_claims(config)
    # gRPC's C core logs to stderr by itself, outside the project's schema: errors only
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from win_automation.engines.hatchet.worker import default_name, run_worker
    from workflows import all_workflows

    code = run_worker(
        config,
        all_workflows(),
        name=name or default_name(),
        slots=slots,
        labels=labels,
        grace=grace_s,
        metrics_interval=interval,
        report=error,
        log_level=logging.DEBUG if cli.debug else logging.INFO,
    )
    raise typer.Exit(code)
