"""`win-automation doctor [--json] [--check NAME ...]`: what is wrong with the set-up, and the fix.

A table for people (mark, item, detail, fix; a summary line), `--json` for programs
(`{"ok", "summary", "checks": [...]}`). Exit 0 when nothing fails (warnings do not fail), 1 when
something does. Doctor changes nothing; for what `supervisor run --once` would repair it says so.
"""

from __future__ import annotations

import os
import sys

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

MARKS = {"pass": "✓", "fail": "✗", "skipped": "-", "warn": "!"}


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    check: list[str] = typer.Option(
        [],
        "--check",
        help="Only this item (repeatable): config, folders, ssh, ssh_key, clock, aloha_server,"
        " aloha_client, hatchet, hatchet_token, hatchet_version, playwright, playwright_version.",
    ),
) -> None:
    """Diagnose the set-up: config, folders, SSH, Aloha, Hatchet, Playwright, clocks; each with its fix."""
    from win_automation.errors import ConfigError, UsageError
    from win_automation.operations.checks import CheckResult
    from win_automation.operations.doctor import ITEMS, diagnose, probes_running, summary

    unknown = [name for name in check if name not in ITEMS]
    if unknown:
        raise UsageError(f"--check: unknown item {', '.join(unknown)} (known: {', '.join(ITEMS)})")
    try:
        loaded = state(ctx).loaded()
    except ConfigError as exc:
        results = [CheckResult("config", "fail", "does not load", str(exc), "correct the named setting")]
        results += [
            CheckResult(n, "skipped", "the config does not load")
            for n in ITEMS[1:]
            if not check or n in check
        ]
    else:
        results = diagnose(loaded, tuple(check))
    totals = summary(results)
    if as_json:
        print_json({"ok": totals["ok"], "summary": totals, "checks": [r.as_dict() for r in results]})
    else:
        rows = [
            (
                MARKS[r.status],
                r.name,
                r.cause or r.detail if r.status in ("fail", "warn") else r.detail,
                r.fix,
            )
            for r in results
        ]
        print_table("win-automation doctor", ["", "item", "detail", "fix"], rows)
        line = (
            f"doctor: {totals['pass']} passed, {totals['fail']} failed, {totals['warn']} warnings,"
            f" {totals['skipped']} skipped"
        )
        typer.echo(line + (": no issues found" if totals["ok"] and not totals["warn"] else ""))
        repairs = totals["supervisor_would_repair"]
        if isinstance(repairs, list) and repairs:
            typer.echo("`win-automation supervisor run --once` would repair: " + "; ".join(repairs))
    code = 0 if totals["ok"] else 1
    if probes_running():  # abandoned at the deadline: do not wait for them, nor tear them down
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
