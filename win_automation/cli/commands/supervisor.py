"""`win-automation supervisor run|status`: keep the VM's services healthy, and show how they are.

`run` runs a pass (the `supervisor-pass` workflow, on the local engine) every `--interval`, or
one with `--once`: exit 0 when every check passes, 1 when one fails, 75 when the circuit breaker
is open (checks failed and nothing was repaired). The loop ends with exit 0 on SIGTERM or Ctrl-C
after the pass in progress. Each pass runs in a thread so that the signal only sets the stop flag.
`WIN_AUTOMATION_SUPERVISOR_FAILPOINT` (check names) makes those checks fail; an unknown name is
exit 2. After each pass it applies retention (artifact folders, journal records), as the worker
does every hour. `status` shows each check's last result from the journal (stale when older than
two intervals: the supervisor is not running), the remediations of the last hour and the breaker.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import typer

from win_automation.cli.options import metrics_for
from win_automation.cli.output import error, print_json, print_table
from win_automation.cli.state import state

log = logging.getLogger(__name__)
app = typer.Typer(help="Check the VM's services, repair them, keep watch.", no_args_is_help=True)
MARKS = {"pass": "✓", "fail": "✗", "skipped": "-", "warn": "!"}


def _pass_once(config: Any) -> tuple[int, dict[str, Any], str | None]:
    """One pass as a job: (exit code, report, error line)."""
    from win_automation.engines.dispatch import run_job
    from workflows.supervisor_pass import PassInput, supervisor_pass

    outcome = run_job(config, supervisor_pass, PassInput(), engine="local")
    _retention(config)
    output = outcome.outputs.get("pass")
    report: dict[str, Any] = dict(getattr(output, "report", {}) or {})
    report["job_id"] = outcome.job_id
    report["exit_code"] = outcome.exit_code
    return outcome.exit_code, report, outcome.error if outcome.exit_code else None


def _retention(config: Any) -> None:
    """Retention after each pass, as the worker applies it every hour: the supervisor may be the
    only scheduler of the host (a pass a minute, each a job with a folder)."""
    from win_automation.artifacts.retention import scheduled_retention

    try:
        scheduled_retention(config)
    except Exception as exc:  # a read-only disk, a busy journal: the pass stands, the next retries
        log.warning("retention failed", extra={"op": "retention", "err": str(exc)})


def _print_report(report: dict[str, Any], as_json: bool, *, lines: bool) -> None:
    if as_json:
        if lines:
            sys.stdout.write(json.dumps(report, default=str) + "\n")
            sys.stdout.flush()
        else:
            print_json(report)
        return
    rows = [
        (
            MARKS.get(c["status"], "?"),
            c["name"],
            f"{c['latency_ms']:.0f} ms",
            c["cause"] or c["detail"],
            c["fix"],
        )
        for c in report.get("checks", [])
    ]
    print_table(f"supervisor pass (job {report.get('job_id')})", ["", "check", "time", "detail", "fix"], rows)
    for entry in report.get("remediations", []):
        typer.echo(f"  remediation {entry['check']}: {entry['outcome']}: {entry['detail']}")
        for rule in entry.get("rules", []):
            typer.echo(f"    firewall rule {rule['firewall_rule']}: {rule['action']}")
    breaker = report.get("breaker", {})
    if breaker:
        left = breaker.get("cooldown_left_seconds") or 0
        trial = breaker.get("trial_owner")
        typer.echo(
            f"breaker: {breaker.get('state')}"
            + (f" ({left:.0f}s left)" if left else "")
            + (f" (trial pass: {trial})" if trial else "")
        )
    sys.stdout.flush()


@app.command("run")
def run(
    ctx: typer.Context,
    once: bool = typer.Option(
        False, "--once", help="One pass, then exit 0 (all pass), 1 (a check fails), 75 (breaker open)."
    ),
    interval: str | None = typer.Option(
        None, "--interval", help="Time between passes, e.g. 1m (default supervisor.interval)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print each pass's report as JSON (a line per pass)."),
    metrics: bool = typer.Option(False, "--metrics", help="Emit metric lines while running."),
    metrics_interval: str | None = typer.Option(
        None, "--metrics-interval", help="Time between metric rounds."
    ),
) -> None:
    """Check the VM's services in order and repair what failed; once, or every --interval."""
    from win_automation.cli.parse import duration_option
    from win_automation.operations.checks import failpoints

    config = state(ctx).config()
    seconds = (
        config.supervisor.interval
        if interval is None
        else duration_option(interval, "--interval", positive=True)
    )
    failpoints()  # an unknown name: exit 2 before anything runs
    with metrics_for(config, metrics, metrics_interval):
        if once:
            code, report, message = _pass_once(config)
            _print_report(report, as_json, lines=False)
            if message:
                error(message)
            raise typer.Exit(code)
        _loop(config, seconds, as_json)


def _loop(config: Any, seconds: float, as_json: bool) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.is_set():
            box: dict[str, Any] = {}

            def work(box: dict[str, Any] = box) -> None:
                try:
                    box["result"] = _pass_once(config)
                except Exception as exc:  # reported below; the loop goes on
                    box["error"] = exc

            thread = threading.Thread(target=work, name="supervisor-pass")
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
            if "error" in box:
                error(f"supervisor pass failed: {box['error']}")
            else:
                _, report, message = box["result"]
                _print_report(report, as_json, lines=True)
                if message:
                    error(message)
            stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Each check's last result, last success and error, failures in a row, the breaker."""
    from win_automation.durations import rfc3339
    from win_automation.operations.supervisor import status as read_status

    data = read_status(state(ctx).config())
    if as_json:
        print_json(data)
        return

    def when(ts: float | None) -> str:
        return rfc3339(ts) if ts else ""

    rows = []
    for check in data["checks"]:
        shown = "stale" if check["stale"] and check["status"] != "never" else check["status"]
        if check["status"] == "never":
            rows.append((check["name"], "never checked", "", "", "", "", ""))
            continue
        rows.append(
            (
                check["name"],
                f"{shown} ({check['status']}, {check['age_seconds']:.0f}s ago)" if check["stale"] else shown,
                when(check["last_success_at"]),
                check["last_error"] or "",
                check["consecutive_failures"],
                check["remediations"],
                when(check["checked_at"]),
            )
        )
    print_table(
        f"supervisor status ({data['vm']}; stale after {data['stale_after_seconds']:.0f}s)",
        ["check", "status", "last success", "last error", "failures in a row", "remediations", "checked"],
        rows,
    )
    breaker = data["breaker"]
    left = breaker["cooldown_left_seconds"]
    typer.echo(
        f"breaker: {breaker['state']} ({breaker['consecutive_failures']} failed passes in a row)"
        + (f", {left:.0f}s of cooldown left" if left else "")
        + (f", trial pass: {breaker['trial_owner']}" if breaker.get("trial_owner") else "")
    )
    typer.echo(f"remediations in the last hour: {len(data['remediations_last_hour'])}")
