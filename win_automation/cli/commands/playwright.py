"""`win-automation playwright install|health|screenshot|run`: the browser on the VM.

`install` and `health` call one operation each and print (a table, or `--json`); `screenshot`
and `run` are jobs (the `playwright-screenshot` and `playwright-run` workflows, `-headed` with
`--headed`) on the local engine or on Hatchet. playwright is imported only inside the operations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from win_automation.cli.options import engine_option, no_wait_option
from win_automation.cli.output import path_text, print_json, print_table
from win_automation.cli.state import state

if TYPE_CHECKING:
    from win_automation.config import Config
    from win_automation.definition import Workflow

app = typer.Typer(
    help="The browser on the VM: install its Playwright server, check it, take screenshots, run scripts.",
    no_args_is_help=True,
)

MAX_SCRIPT_BYTES = 256 * 1024


def _timeout(value: str) -> float:
    from win_automation.cli.parse import duration_option

    return duration_option(value, "--timeout", positive=True)


@app.command()
def install(
    ctx: typer.Context,
    channel: str = typer.Option(
        "msedge", "--channel", help="msedge (the VM's Edge) or chromium (downloaded on the VM)."
    ),
    headless: bool = typer.Option(
        True, "--headless/--headed", help="Headed shows the browser on the VM desktop."
    ),
    rotate: bool = typer.Option(
        False, "--rotate-ws-path", help="Make a new wsPath (the old one stops working)."
    ),
    wheel: Path | None = typer.Option(
        None,
        "--wheel",
        help="The playwright win_amd64 wheel (offline); else it is downloaded and cached.",
        dir_okay=False,
    ),
    allow_from: str | None = typer.Option(
        None, "--allow-from", help="Address the firewall rule admits (default: this host, as the VM sees it)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Put a Playwright server of this client's version on the VM (a task at logon) and check it."""
    import os

    from win_automation.errors import UsageError
    from win_automation.operations.playwright import WS_PATH_ENV
    from win_automation.operations.playwright_install import install as run_install

    if channel not in ("msedge", "chromium"):
        raise UsageError(f"--channel: must be msedge or chromium, got {channel!r}")
    config = state(ctx).config()
    report = run_install(
        config, channel=channel, headless=headless, rotate=rotate, wheel=wheel, allow_from=allow_from
    )
    ws_path = report.ws_path.get_secret_value()
    export = None
    if report.ws_path_new or os.environ.get(WS_PATH_ENV) != ws_path:
        export = f"export {WS_PATH_ENV}={ws_path}"
    if as_json:
        print_json({**report.as_dict(), "export": export})
    else:
        status = "unchanged" if not report.changed else "changed: " + ", ".join(report.changed)
        typer.echo(
            f"Playwright {report.version} server ({report.channel}, "
            f"{'headless' if report.headless else 'headed'}) in {report.dir}: {status}"
        )
        if export:
            typer.echo(export)
    if report.health is not None and not report.health.ok:
        from win_automation.cli.output import error

        error(f"installed, but health fails: {report.health.cause}; fix: {report.health.fix}")
        raise typer.Exit(report.health.exit_code or 1)


@app.command()
def health(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Reachable, wsPath accepted, client and server versions, connect and new-page latency."""
    from win_automation.operations.playwright import health as check

    report = check(state(ctx).config())
    if as_json:
        print_json(report.as_dict())
    else:
        rows = [
            ("ok", "yes" if report.ok else "NO"),
            ("endpoint", report.endpoint + ("" if report.via == "direct" else f" ({report.via})")),
            ("client version", report.client_version),
            ("server version", report.server_version or "unknown"),
            ("connect", "" if report.connect_ms is None else f"{report.connect_ms:.0f} ms"),
            ("new page", "" if report.new_page_ms is None else f"{report.new_page_ms:.0f} ms"),
        ]
        if not report.ok:
            rows += [("cause", report.cause or ""), ("fix", report.fix or "")]
        print_table("Playwright server", ["check", "value"], rows)
    if not report.ok:
        from win_automation.cli.output import error

        error(f"{report.cause}; fix: {report.fix}")
        raise typer.Exit(report.exit_code or 1)


def _job(
    ctx: typer.Context,
    workflow: Workflow,
    payload: dict[str, Any],
    as_json: bool,
    engine: str | None,
    no_wait: bool,
) -> None:
    from win_automation.cli.commands.run import report, start

    config: Config = state(ctx).config()
    model = workflow.parse_input(payload, name="playwright")
    outcome = start(config, workflow, model, engine=engine, no_wait=no_wait, as_json=as_json)
    if outcome is None:
        return
    if not as_json and outcome.artifacts_dir is not None:
        output = next(iter(outcome.outputs.values()), None)
        result = getattr(output, "result", None)
        if output is not None and hasattr(output, "result"):
            typer.echo(json.dumps(result, indent=2))
        for name in getattr(output, "artifacts", []):
            typer.echo(f"{name}: {outcome.artifacts_dir / name}")
    report(outcome, config, as_json)


@app.command()
def screenshot(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="The page, as the VM reaches it (http:// or https://)."),
    full_page: bool = typer.Option(False, "--full-page", help="The whole scrollable page."),
    wait_for: str | None = typer.Option(None, "--wait-for", help="Wait for this selector to be visible."),
    trace: bool = typer.Option(
        False, "--trace", help="Also record trace.zip (open with `playwright show-trace`)."
    ),
    headed: bool = typer.Option(False, "--headed", help="A GUI job: needs the VM desktop (one at a time)."),
    timeout: str = typer.Option("30s", "--timeout", help="Deadline of the whole job."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Take a screenshot of URL with the browser on the VM (artifacts screenshot.png, trace.zip)."""
    from workflows import playwright_screenshot as wf

    workflow = wf.playwright_screenshot_headed if headed else wf.playwright_screenshot
    payload = {
        "url": url,
        "full_page": full_page,
        "wait_for": wait_for,
        "trace": trace,
        "timeout_seconds": _timeout(timeout),
    }
    _job(ctx, workflow, payload, as_json, engine, no_wait)


def read_script(path: Path) -> str:
    """The script's text; UsageError unless it is a readable UTF-8 .py file defining run()."""
    from win_automation.errors import UsageError
    from win_automation.operations.playwright_jobs import check_script

    if path.suffix != ".py":
        raise UsageError(f"SCRIPT {path}: not a Python script (.py); fix: a .py file defining run(...)")
    from win_automation.regularfiles import NotRegularFile, open_regular

    try:
        with open_regular(path) as handle:  # a FIFO or device is refused, never read
            data = handle.read(MAX_SCRIPT_BYTES + 1)  # never more: a huge file is not read whole
            size = os.fstat(handle.fileno()).st_size
    except NotRegularFile as exc:
        raise UsageError(f"SCRIPT {path}: not a regular file ({exc.kind})") from None
    except OSError as exc:
        raise UsageError(f"SCRIPT {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise UsageError(f"SCRIPT {path}: {max(size, len(data))} bytes, at most {MAX_SCRIPT_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"SCRIPT {path}: not UTF-8 text, so not a Python script") from None
    check_script(text, path.name)
    return text


@app.command("run")
def run_script(
    ctx: typer.Context,
    script: Path = typer.Argument(
        ..., help="A Python file defining run(page, context, input).", dir_okay=False
    ),
    input: str | None = typer.Option(None, "--input", help="JSON given to run() as `input`."),
    trace: bool = typer.Option(True, "--trace/--no-trace", help="Record trace.zip (on by default)."),
    headed: bool = typer.Option(False, "--headed", help="A GUI job: needs the VM desktop (one at a time)."),
    timeout: str = typer.Option("30s", "--timeout", help="Default deadline of each page action."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    engine: str | None = engine_option(),
    no_wait: bool = no_wait_option(),
) -> None:
    """Run a Playwright script on the VM's browser; its return value (JSON) is the job's output."""
    from win_automation.errors import UsageError
    from workflows import playwright_run as wf

    value = None
    if input is not None:
        try:
            value = json.loads(input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input: invalid JSON at line {exc.lineno} column {exc.colno}") from None
    payload = {
        "script": read_script(script),
        "script_name": path_text(script.name),
        "input": value,
        "trace": trace,
        "timeout_seconds": _timeout(timeout),
    }
    _job(ctx, wf.playwright_run_headed if headed else wf.playwright_run, payload, as_json, engine, no_wait)
