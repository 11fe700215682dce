"""The PowerShell that win-automation sends to the VM, read from `scripts/windows/*.ps1`.

One source per snippet: remediations, task registration, the desktop probe and `playwright
install` live as .ps1 files (each with a `param()` block) and are sent with their parameters as
arguments (`Vm.powershell(script_text("Name"), args=(...))`), never copied into Python strings.

`scripts/windows/` is the source. `win_automation/windows` is a symlink to it, so a checkout (and
the editable install) reads the files there, and a built wheel or sdist copies them into the
package (package data in pyproject.toml): `pip install .` and the Nix package read the same files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from win_automation.errors import ConfigError

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "windows"


@cache
def script_text(name: str) -> str:
    """The text of `scripts/windows/<name>.ps1` (UTF-8, BOM removed); ConfigError (exit 2) when
    the file is missing (a broken install)."""
    path = SCRIPTS_DIR / f"{name}.ps1"
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read the VM script {path}: {exc.strerror or exc}") from None
