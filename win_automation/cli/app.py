"""The root command: global options, sub-command registration and the exit-code mapping.

Sub-command modules import only typer at module level; paramiko, playwright and hatchet_sdk are
imported inside the commands that need them, so `--help` stays fast.

Log level: commands people run at a terminal log warnings and errors only (their results go to
stdout); `-v`/`--verbose` adds info lines, `--debug` debug lines. The long-running services in
SERVICES (the worker, the supervisor's loop) log at info by default.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from win_automation import __version__
from win_automation.cli.commands import aloha as aloha_cmd
from win_automation.cli.commands import artifacts as artifacts_cmd
from win_automation.cli.commands import config as config_cmd
from win_automation.cli.commands import doctor as doctor_cmd
from win_automation.cli.commands import jobs as jobs_cmd
from win_automation.cli.commands import playwright as playwright_cmd
from win_automation.cli.commands import run as run_cmd
from win_automation.cli.commands import ssh as ssh_cmd
from win_automation.cli.commands import supervisor as supervisor_cmd
from win_automation.cli.commands import vm as vm_cmd
from win_automation.cli.commands import worker as worker_cmd
from win_automation.cli.output import error
from win_automation.cli.state import CliState

app = typer.Typer(
    name="win-automation",
    help="Drive a Windows VM from Linux: PowerShell over SSH, Aloha GUI tasks, Playwright, durable jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(config_cmd.app, name="config")
app.command("run")(run_cmd.run)
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(artifacts_cmd.app, name="artifacts")
app.add_typer(ssh_cmd.app, name="ssh")
app.add_typer(aloha_cmd.app, name="aloha")
app.add_typer(playwright_cmd.app, name="playwright")
app.command("worker")(worker_cmd.worker)
app.add_typer(vm_cmd.app, name="vm")
app.add_typer(supervisor_cmd.app, name="supervisor")
app.command("doctor")(doctor_cmd.doctor)


SERVICES = frozenset({"worker", "supervisor"})
"""Long-running commands whose info lines (started, connected, job done) are their output."""


def log_level(command: str | None, *, verbose: bool, debug: bool) -> int:
    if debug:
        return logging.DEBUG
    if verbose or command in SERVICES:
        return logging.INFO
    return logging.WARNING


def _version(value: bool) -> None:
    if value:
        typer.echo(f"win-automation {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        envvar="WIN_AUTOMATION_CONFIG",
        help="JSON config file (overrides defaults).",
        readable=False,  # the config loader says what is wrong with it, in one line
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log info lines too (default: warnings)."),
    debug: bool = typer.Option(False, "--debug", help="Log at debug level."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    from win_automation import log

    log.install(log_level(ctx.invoked_subcommand, verbose=verbose, debug=debug))
    ctx.obj = CliState(config_path=config, debug=debug, verbose=verbose)


def main() -> None:
    """Console entry point: run the CLI and exit with the documented code, never a traceback."""
    from win_automation.errors import WinAutomationError

    try:
        app(prog_name="win-automation")
    except WinAutomationError as exc:
        from win_automation.log import redact

        error(redact(str(exc)))
        sys.exit(exc.exit_code)
