"""`win-automation ssh run|script|put|get|trust|persist`: commands and files on the VM over SSH.

`run` and `script` are jobs (the `ssh-exec` workflow, on the local engine or on Hatchet with
`--engine`): their output streams as it arrives (on Hatchet: when the run ends), is kept in the
job's artifact folder, and the CLI exits with the remote exit code
(0-255 as is, anything else 255; 124 when the deadline passed). paramiko is imported inside the
commands only. `persist status|stop` shows and stops the warm-connection helpers that job
commands share (`ssh.persist`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from win_automation.cli.job_output import live as live_output
from win_automation.cli.job_output import print_json_streamed, whole, write_to
from win_automation.cli.options import engine_option, no_wait_option
from win_automation.cli.output import error, path_text, print_json
from win_automation.cli.parse import utf8_words
from win_automation.cli.state import state

if TYPE_CHECKING:
    from win_automation.config import Config

app = typer.Typer(
    help="Run PowerShell or cmd on the VM, copy files, trust its host key.", no_args_is_help=True
)


def _timeout(value: str | None, config: Config) -> float:
    from win_automation.cli.parse import duration_option

    return config.ssh.command_timeout if value is None else duration_option(value, "--timeout", positive=True)


def _run_job(
    ctx: typer.Context,
    payload: dict[str, Any],
    as_json: bool,
    engine: str | None = None,
    no_wait: bool = False,
) -> None:
    from win_automation.cli.commands.run import start
    from win_automation.log import redact
    from win_automation.operations.command_result import cli_exit_code, describe_exit_code
    from workflows import ssh_exec

    config = state(ctx).config()
    workflow = ssh_exec.ssh_exec
    model = workflow.parse_input({k: v for k, v in payload.items() if v is not None}, name="input")
    shown: set[str] = set()  # the streams that were printed live

    def live(stream: str, text: str) -> None:
        shown.add(stream)
        live_output(stream, text)

    outcome = start(
        config,
        workflow,
        model,
        engine=engine,
        no_wait=no_wait,
        as_json=as_json,
        on_output=None if as_json else live,
    )
    if outcome is None:
        return
    result = outcome.outputs.get("exec")
    if not isinstance(result, ssh_exec.ExecOutput):  # it never ran: no connection, cancelled...
        error(redact(outcome.error or f"job {outcome.job_id} {outcome.state.value}"))
        raise typer.Exit(outcome.exit_code)
    stdout = whole(outcome, "stdout", result.stdout, result.stdout_truncated)
    stderr = whole(outcome, "stderr", result.stderr, result.stderr_truncated)
    if as_json:
        print_json_streamed(
            {
                "exit_code": result.exit_code,
                "stdout": stdout,
                "stderr": stderr,
                "duration_ms": result.duration_ms,
                "job_id": outcome.job_id,
                "timed_out": result.timed_out,
                "skipped": result.skipped,
                "output_capped": result.output_capped,
            }
        )
    else:
        if outcome.engine != "local":  # ran on Hatchet: the output arrives with the result
            for piece in stdout:
                write_to(sys.stdout)(piece)
            for piece in stderr:
                write_to(sys.stderr)(piece)
        elif result.stderr and "stderr" not in shown:
            # PowerShell's errors come as CLIXML, held back from the live output: their text here
            write_to(sys.stderr)(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
            if result.stderr_truncated:
                sys.stderr.write(
                    f"note: stderr shows its last {len(result.stderr)} characters of error text"
                    f" (all of it, as CLIXML, in stderr.txt of job {outcome.job_id})\n"
                )
        if result.skipped:
            sys.stderr.write(f"skipped: the idempotency check passed (job {outcome.job_id})\n")
    if result.output_capped:  # the job's own error (which stream, which file), naming the job
        error(f"{redact(outcome.error or 'ssh.max_output passed')} (job {outcome.job_id})")
        raise typer.Exit(outcome.exit_code)
    if result.timed_out:
        error(
            f"the command passed its deadline of {payload.get('timeout_seconds')}s; "
            f"its remote process tree was killed (job {outcome.job_id})"
        )
    elif result.cancelled:
        error(f"job {outcome.job_id} cancelled; the command's remote process tree was killed")
    elif not 0 <= result.exit_code <= 255:
        error(f"the remote command exited with {describe_exit_code(result.exit_code)}; exiting 255")
    raise typer.Exit(outcome.exit_code if result.cancelled else cli_exit_code(result.exit_code))


def _fits(command: str) -> None:
    """Refuse, before any job or connection, a command sent as is (cmd mode on a posix sshd) that
    is too long for the sshd's request. Whatever goes through PowerShell has no such limit: a
    script too long for a command line is uploaded. (--idempotent-check is one argument: Linux
    passes at most 128 KiB in one.)"""
    from win_automation.errors import UsageError
    from win_automation.operations.powershell import MAX_SENT_COMMAND

    if (size := len(command.encode("utf-8"))) > MAX_SENT_COMMAND:
        raise UsageError(
            f"COMMAND: {size / 1024:.0f} KiB, over the {MAX_SENT_COMMAND // 1024} KiB that fit "
            "the sshd's 256 KiB request; put it in a script file and run "
            "`win-automation ssh script FILE`"
        )


@app.command()
def run(
    ctx: typer.Context,
    command: list[str] = typer.Argument(..., help="The command (after --); its words are joined by spaces."),
    shell: str = typer.Option("powershell", "--shell", help="powershell (encoded) or cmd (as given)."),
    timeout: str | None = typer.Option(
        None, "--timeout", help="Deadline, e.g. 30s or 5m (ssh.command_timeout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    idempotent: bool = typer.Option(False, "--idempotent", help="Skip the command when the check passes."),
    idempotent_check: str | None = typer.Option(
        None, "--idempotent-check", help="The check (same shell); exit 0 means: already done, skip."
    ),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Run a command on the VM as a job; exit with its exit code."""
    from win_automation.errors import UsageError

    if shell not in ("powershell", "cmd"):
        raise UsageError(f"--shell: must be powershell or cmd, got {shell!r}")
    if idempotent != (idempotent_check is not None):
        raise UsageError("--idempotent and --idempotent-check CHECK go together")
    utf8_words(command, "COMMAND")
    config = state(ctx).config()
    if shell == "cmd" and config.ssh.remote_os == "posix":
        _fits(" ".join(command))
    payload = {
        "command": " ".join(command),
        "shell": shell,
        "timeout_seconds": _timeout(timeout, config),
        "check": idempotent_check,
    }
    _run_job(ctx, payload, as_json, engine, no_wait)


@app.command()
def script(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A PowerShell script (.ps1) on this machine.", dir_okay=False),
    args: list[str] | None = typer.Argument(None, help="Arguments for the script (after --)."),
    timeout: str | None = typer.Option(
        None, "--timeout", help="Deadline, e.g. 30s or 5m (ssh.command_timeout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Run a local .ps1 script on the VM as a job (long scripts go over SFTP and run with -File)."""
    from win_automation.errors import UsageError
    from win_automation.operations.powershell import MAX_SCRIPT_BYTES
    from win_automation.regularfiles import NotRegularFile, open_regular

    utf8_words(args or [], "ARGS")
    try:
        with open_regular(file) as handle:  # a FIFO or device is refused, never read
            data = handle.read(MAX_SCRIPT_BYTES + 1)  # never more: a huge file is not read whole
            if len(data) > MAX_SCRIPT_BYTES:
                size = os.fstat(handle.fileno()).st_size
                raise UsageError(
                    f"FILE: {file} is {size >> 20} MiB, over the {MAX_SCRIPT_BYTES >> 20} MiB a script may be"
                )
            text = data.decode("utf-8-sig")
    except NotRegularFile as exc:
        raise UsageError(f"FILE: {file} is not a regular file ({exc.kind})") from None
    except OSError as exc:
        raise UsageError(f"FILE: cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"FILE: {file} is not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"FILE: {file} is empty")
    config = state(ctx).config()
    payload = {
        "command": text,
        "shell": "powershell",
        "args": list(args or []),
        "timeout_seconds": _timeout(timeout, config),
        "display": path_text(file),
    }
    _run_job(ctx, payload, as_json, engine, no_wait)


def _progress(label: str) -> Any:
    """A rich progress bar on a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    return Progress(
        f"[bold]{label}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=Console(stderr=True)
    )


def _transfer(ctx: typer.Context, label: str, as_json: bool, fn: Any) -> None:
    from win_automation.cli import server
    from win_automation.interrupts import interruptible
    from win_automation.operations.vm import Vm

    config = state(ctx).config()
    vm = Vm(config)
    server.start_later(config.ssh.persist)  # as job commands: later calls fork a warm CLI process
    bar = _progress(label)
    with interruptible():  # SIGTERM or SIGHUP as Ctrl-C: the part file is removed
        if bar is None:
            result = fn(vm, None)
        else:
            with bar:
                task = bar.add_task(label, total=None)
                result = fn(vm, lambda done, total: bar.update(task, completed=done, total=max(total, 0)))
    if as_json:
        print_json(result.model_dump())
    else:
        typer.echo(
            f"{result.direction} {result.size_bytes} bytes sha256 {result.sha256} ({result.duration_ms} ms)"
        )


@app.command()
def put(
    ctx: typer.Context,
    local: Path = typer.Argument(..., help="The local file."),
    remote: str = typer.Argument(..., help="The path on the VM (relative paths are in the login's home)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Upload a file, verified by size and sha256; never a partial file under REMOTE."""
    _transfer(ctx, f"put {local.name}", as_json, lambda vm, progress: vm.put(local, remote, progress))


@app.command()
def get(
    ctx: typer.Context,
    remote: str = typer.Argument(..., help="The path on the VM."),
    local: Path = typer.Argument(..., help="The local file to write."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Download a file, verified by size and sha256; never a partial file under LOCAL."""
    from win_automation.operations.vm import share_connections

    share_connections()  # through the VM's warm helper (ssh.persist), as job commands
    _transfer(ctx, f"get {Path(remote).name}", as_json, lambda vm, progress: vm.get(remote, local, progress))


@app.command()
def trust(
    ctx: typer.Context,
    fingerprint: str | None = typer.Option(
        None, "--fingerprint", help="Trust only if the key has this SHA256: fingerprint (for scripts)."
    ),
    yes: bool = typer.Option(False, "--yes", help="Trust the key shown without asking."),
    replace: bool = typer.Option(False, "--replace", help="Replace a different key already recorded."),
) -> None:
    """Show the VM's host key (type and SHA256 fingerprint) and record it in the known-hosts file."""
    from win_automation.errors import HostKeyError, UsageError
    from win_automation.operations.vm import Vm

    if fingerprint is not None and not fingerprint.startswith("SHA256:"):
        raise UsageError(f"--fingerprint: must start with 'SHA256:', got {fingerprint!r}")
    vm = Vm(state(ctx).config())
    key = vm.host_key()
    name = key.presented.entry
    typer.echo(f"{name} presents {key.presented.describe()}")
    if fingerprint is not None:
        if fingerprint != key.presented.fingerprint:
            raise HostKeyError(f"--fingerprint {fingerprint} does not match the key {name} presents")
    elif not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "not a terminal: confirm with --fingerprint SHA256:... (the key you expect) or --yes"
            )
        if not typer.confirm("Trust this key?", default=False):
            raise UsageError("not trusted")
    changed = vm.trust(key, replace=replace)
    known_hosts = vm.config.ssh.known_hosts
    typer.echo(f"{'recorded in' if changed else 'already in'} {known_hosts}")


persist_app = typer.Typer(
    help="The warm connections that job commands share (ssh.persist): show or stop them.",
    no_args_is_help=True,
)
app.add_typer(persist_app, name="persist")


@persist_app.command("status")
def persist_status(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Show the warm-connection helpers and warm CLI processes of this data dir: pid, since when, alive."""
    from win_automation.cli.output import print_table
    from win_automation.cli.server import servers
    from win_automation.operations.vm import warm_helpers

    config = state(ctx).config()
    found = warm_helpers(config)
    cli_servers = servers()
    if as_json:
        print_json({"persist_seconds": config.ssh.persist, "helpers": found, "cli_servers": cli_servers})
        return
    if not found and not cli_servers:
        typer.echo("no warm connection" + ("" if config.ssh.persist > 0 else " (ssh.persist is 0: off)"))
        return
    if found:
        rows = [(h["vm"], h["user"], h["pid"], h["started"], h["state"]) for h in found]
        print_table("warm connections", ("vm", "user", "pid", "started", "state"), rows)
    if cli_servers:
        servers_rows = [
            (
                s["pid"],
                s["started"],
                "alive" if s["alive"] else "dead",
                "yes" if s["current"] else "no (old code)",
            )
            for s in cli_servers
        ]
        print_table("warm CLI processes", ("pid", "started", "state", "current"), servers_rows)


@persist_app.command("stop")
def persist_stop(
    ctx: typer.Context,
    all_vms: bool = typer.Option(False, "--all", help="Every VM's helper, not only ssh.host:port's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stop the warm-connection helper of the configured VM (or all of them with --all) and the
    warm CLI processes (a call running in one goes on)."""
    from win_automation.cli.server import stop_servers
    from win_automation.operations.vm import stop_warm_helpers

    config = state(ctx).config()
    stopped = stop_warm_helpers(config, None if all_vms else config.ssh.vm_key)
    cli_stopped = stop_servers()
    if as_json:
        print_json({"stopped": stopped, "cli_servers_stopped": cli_stopped})
    else:
        typer.echo(f"stopped {len(stopped)} warm connection(s) and {len(cli_stopped)} warm CLI process(es)")
