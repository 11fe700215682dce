"""The root command: global options, sub-command registration and the exit-code mapping.

Sub-command modules import only typer at module level; paramiko, playwright and hatchet_sdk are
imported inside the commands that need them, so `--help` stays fast.

Log level: commands people run at a terminal log warnings and errors only (their results go to
stdout); `-v`/`--verbose` adds info lines, `--debug` debug lines. The long-running services in
SERVICES (the worker, the supervisor's loop) log at info by default.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any

# No pydantic plugins: finding them scans every installed distribution's metadata (importlib.
# metadata), 20-40 ms of each CLI call, for plugins this CLI never uses. Set before any model is
# built; a PYDANTIC_DISABLE_PLUGINS the caller set wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer
import typer.main
from typer._click import exceptions as click_errors  # typer vendors click: its errors are here

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
from win_automation.cli.output import (
    STOPPED_ERROR_WAIT,
    claim_closed_std_fds,
    discard_output,
    error,
    output_failed,
)
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


_ROOT_FLAGS = frozenset({"--verbose", "-v", "--debug"})


def _command_name(argv: list[str]) -> str | None:
    """The sub-command argv names (after the root options), or None when it names none."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif not (arg in _ROOT_FLAGS or arg.startswith("--config=")):
            return None if arg.startswith("-") else arg
    return None


def for_command(argv: list[str]) -> typer.Typer:
    """The app with only the sub-command argv names registered, when it names one: typer builds
    every registered command's parser on each call (a few ms per group), and a CLI call runs one.
    Root --help, --version and an unknown command get the whole app."""
    name = _command_name(argv)
    groups = [g for g in app.registered_groups if g.name == name]
    commands = [c for c in app.registered_commands if c.name == name]
    if not groups and not commands:
        return app
    pruned = copy.copy(app)
    pruned.registered_groups, pruned.registered_commands = groups, commands
    return pruned


_BUILT: dict[str, Any] = {}
"""The click command built for each sub-command name ("" for the whole app), once per process:
the warm CLI process builds them all (`warm`), so its children do not."""


def command_for(argv: list[str]) -> Any:
    """The click command that runs `argv` (typer builds it from the app: a few ms per group, and
    pydantic adapters for the parameters, built on first use and kept on the parameters)."""
    pruned = for_command(argv)
    key = "" if pruned is app else str(_command_name(argv))
    built = _BUILT.get(key)
    if built is None:
        built = _BUILT[key] = typer.main.get_command(pruned)
    return built


def warm() -> None:
    """Build every sub-command's click command and its parameters' adapters (the warm CLI
    process does, before it forks calls)."""
    names = [g.name for g in app.registered_groups] + [c.name for c in app.registered_commands]
    pending = [command_for([name]) for name in names if name] + [command_for([])]
    while pending:
        command = pending.pop()
        context = command.context_class(command)  # the help option is built for a context, once
        for param in command.get_params(context):
            if hasattr(param, "get_runtime_param"):
                param.get_runtime_param()
        pending.extend(getattr(command, "commands", {}).values())


def main() -> None:
    """Console entry point: run the CLI and exit with the documented code, never a traceback."""
    from win_automation.errors import WinAutomationError

    if sys.excepthook != typer.main.except_hook:  # as Typer.__call__ does
        sys.excepthook = typer.main.except_hook
    if claim_closed_std_fds():  # `>&-`: nothing runs whose output would go nowhere
        error("cannot write the output: standard output (fd 1) is closed")
        sys.exit(74)
    for stream in (sys.stdout, sys.stderr):
        # A character the terminal's encoding lacks (PYTHONIOENCODING=ascii, a C locale without
        # UTF-8 coercion) is shown escaped: it was a UnicodeEncodeError that stopped the command.
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        try:
            # not standalone: click's own errors (an unknown option, a missing argument) come here
            code = command_for(sys.argv[1:])(prog_name="win-automation", standalone_mode=False)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # output still buffered fails here, where it is handled, not at exit
        sys.exit(code if isinstance(code, int) else 0)  # an exit code (typer.Exit), or a return
    except click_errors.NoArgsIsHelpError as exc:  # `win-automation ssh`: its help, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:  # as every other bad input: one line, exit 2
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error(exc.format_message().rstrip(".") + where)
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        error(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        error("aborted")
        sys.exit(1)
    except BrokenPipeError:  # the reader went away (`| head -c1`): silent, exit 1, as click has it
        discard_output()
        sys.exit(1)
    except WinAutomationError as exc:
        from win_automation.log import redact

        stopped = exc.exit_code == 130  # a stop does not wait for a paused reader
        error(redact(str(exc)), wait=STOPPED_ERROR_WAIT if stopped else None)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if not output_failed(exc):
            raise
        with contextlib.suppress(OSError):  # stderr too
            error(f"cannot write the output: {exc.strerror}")
        sys.exit(74)
