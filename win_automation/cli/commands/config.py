"""`win-automation config show|validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

app = typer.Typer(help="Show or validate the configuration.", no_args_is_help=True)


@app.command()
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every setting with the layer it came from (default, file or env); secrets as ***.

    `--json` gives typed values: integers, booleans, durations as seconds, null when unset."""
    loaded = state(ctx).loaded()
    if as_json:
        settings = [{"key": k, "value": v, "source": s} for k, v, s in loaded.typed()]
        print_json({"file": None if loaded.file is None else str(loaded.file), "settings": settings})
    else:
        rows = list(loaded.rows())
        print_table(f"configuration ({loaded.file or 'no file'})", ["setting", "value", "source"], rows)


@app.command()
def validate(
    ctx: typer.Context,
    path: Path | None = typer.Argument(
        None, help="Config file to check; defaults to --config.", readable=False
    ),
) -> None:
    """Check a config file (with the environment applied); exit 0 when valid, 2 when not."""
    from win_automation.config import load_config

    target = path or state(ctx).config_path
    if target is None:
        raise typer.BadParameter("give a file, or --config", param_hint="PATH")
    load_config(target)
    typer.echo(f"{target}: valid")
