"""Running the CLI as a user the file system can refuse: root ignores file modes, so when the tests
run as root the command is started as `nobody` (setpriv); as any other user it runs as that user.
Folders a test hands to such a process live in `shared_dir()`, which that user can enter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT, Run

NOBODY = 65534


def prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def shared_dir() -> Path:
    """A fresh folder under /tmp that the unprivileged user owns (and so can write)."""
    path = Path(tempfile.mkdtemp(prefix="wa-unpriv-"))
    path.chmod(0o755)
    if os.geteuid() == 0:
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
