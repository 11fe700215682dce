"""Running the CLI as a user the file system can refuse: root ignores file modes, so when the tests
run as root the command runs as root without the capabilities that bypass them (setpriv drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH): modes then apply to it as to any user, while the
checkout and its virtualenv stay readable wherever the clone is (under /root, say). As any other
user it runs as that user. `not_mine(path)` gives a file or folder to another user."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT, Run

NOBODY = 65534
_BYPASS = "-dac_override,-dac_read_search"


def prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--bounding-set={_BYPASS}", f"--inh-caps={_BYPASS}", "--"]


def shared_dir() -> Path:
    """A fresh folder under /tmp that the unprivileged process owns (and so can write)."""
    path = Path(tempfile.mkdtemp(prefix="wa-unpriv-"))
    path.chmod(0o755)
    return path


def not_mine(path: Path) -> Path:
    """`path` given to another user (`nobody`): the unprivileged process may read it, not write it."""
    os.chown(path, NOBODY, NOBODY)
    return path


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> Run:
    """`win-automation ARGS` as the unprivileged user (the package is found from the checkout)."""
    proc = subprocess.run(
        [*prefix(), sys.executable, "-m", "win_automation", *args],
        env={**env, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
