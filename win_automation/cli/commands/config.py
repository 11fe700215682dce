"""`win-automation config show|validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from win_automation.cli.output import print_json, print_table
from win_automation.cli.state import state

app = typer.Typer(help="Show or validate the configuration.", no_args_is_help=True)


@app.command()
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every setting with the layer it came from (default, file or env); secrets as ***."""
    loaded = state(ctx).loaded()
    rows = list(loaded.rows())
    if as_json:
        print_json(
            {"file": loaded.file, "settings": [{"key": k, "value": v, "source": s} for k, v, s in rows]}
        )
    else:
        print_table(f"configuration ({loaded.file or 'no file'})", ["setting", "value", "source"], rows)


@app.command()
def validate(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="Config file to check; defaults to --config."),
) -> None:
    """Check a config file (with the environment applied); exit 0 when valid, 2 when not."""
    from win_automation.config import load_config

    target = path or state(ctx).config_path
    if target is None:
        raise typer.BadParameter("give a file, or --config", param_hint="PATH")
    load_config(target)
    typer.echo(f"{target}: valid")
