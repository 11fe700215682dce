"""`ssh run` keeps memory flat: the output streams into the job's artifact files as it arrives and
only each stream's tail stays in memory (and in result.json); `--json` reads back from the files.
Peak RSS is measured on a real CLI process against the real sshd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20

PEAK = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    code = subprocess.run(sys.argv[2:], stdout=out).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, code)
"""


def run_measured(env: dict[str, str], cwd: Path, out: Path, *args: str) -> tuple[int, int]:
    """(peak RSS in MiB, exit code) of `win-automation ARGS` with stdout into `out`."""
    # The CLI in the measured process (not the launcher, whose call a warm CLI process may run).
    in_process = "from win_automation.cli.app import main; main()"
    cmd = [sys.executable, "-c", PEAK, str(out), sys.executable, "-c", in_process, *args]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=True)
    peak, code = done.stdout.split()
    return int(peak), int(code)


def test_64_mib_of_output_stays_under_100_mib_and_is_stored_once(
    live_sshd, known_hosts, cli_env, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env = {**cli_env, **live_sshd.env(known_hosts)}
    size = 64 * MIB
    out = tmp_path / "out.txt"
    peak, code = run_measured(
        env, tmp_path, out, "ssh", "run", "--shell", "cmd", "--", f"head -c {size} /dev/zero | tr '\\0' x"
    )
    assert code == 0 and peak < 100, peak
    assert out.stat().st_size == size  # printed live, whole
    folder = next((tmp_path / "artifacts").iterdir())
    assert (folder / "stdout.txt").stat().st_size == size
    result = json.loads((folder / "result.json").read_text())
    assert result["stdout_truncated"] is True and len(result["stdout"]) == 64 * 1024
    assert (folder / "result.json").stat().st_size < 200 * 1024  # the output is not stored twice


def test_json_reads_the_whole_output_back_from_the_files(live_sshd, known_hosts, cli_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**cli_env, **live_sshd.env(known_hosts)}
    size = 16 * MIB
    out = tmp_path / "out.json"
    command = f"head -c {size} /dev/zero | tr '\\0' y; printf 'é\\n'; echo tail-of-stderr >&2"
    peak, code = run_measured(env, tmp_path, out, "ssh", "run", "--json", "--shell", "cmd", "--", command)
    assert code == 0 and peak < 100, peak
    data = json.loads(out.read_text())
    assert data["stdout"] == "y" * size + "é\n" and data["stderr"] == "tail-of-stderr\n"
    assert data["exit_code"] == 0 and data["job_id"]
