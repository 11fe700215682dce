"""Warm PowerShell benchmark: a command in the warm session against a powershell.exe per command.

    .venv/bin/python benchmarks/powershell_bench.py [--commands 50] [--rounds 5] [--cli-runs 9]

Starts the tests' real sshd on loopback (tests/fixture_sshd.py; run as root for its test login),
whose `powershell.exe` is the tests' Python stand-in: a per-command start here is a Python
interpreter's (~20-40 ms), not Windows PowerShell's (~0.6 s), so the ratios below are far smaller
than on a VM (the opt-in real-VM suite measures that: tests/test_vm.py). Measures, in interleaved
rounds (medians of the rounds; each round N sequential commands):
- in-process, one connection (the worker's path): `run_powershell` per command vs `warm=True`;
- through the warm helper (a CLI call's executor, `WarmConnection`): the same two;
- whole CLI processes through a warm helper: `ssh run -- "Write-Output 'hi'"` with
  `ssh.warm_powershell` off and on (medians of --cli-runs, alternating).
Prints each figure and the ratios per-command / warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixture_sshd import SshServer  # noqa: E402

SCRIPT = "Write-Output 'hi'"


def per_command(n: int, run: Callable[[], object]) -> float:
    """Milliseconds per command for n sequential calls of run()."""
    started = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - started) * 1000 / n


def compare(name: str, n: int, rounds: int, cold: Callable[[], object], warm: Callable[[], object]) -> None:
    cold(), warm()  # connect, start the session
    times: dict[str, list[float]] = {"per-command": [], "warm": []}
    for _ in range(rounds):
        times["per-command"].append(per_command(n, cold))
        times["warm"].append(per_command(n, warm))
    a, b = statistics.median(times["per-command"]), statistics.median(times["warm"])
    print(f"{name}: per-command {a:.2f} ms, warm session {b:.2f} ms per command: warm is {a / b:.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cli-runs", type=int, default=9)
    opts = parser.parse_args()

    from win_automation.adapters import persist, persist_wire, ssh
    from win_automation.operations.ssh import run_powershell

    server = SshServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="wa-psbench-"))
    known = server.write_known_hosts(work / "known_hosts")
    cfg = server.config(known)
    try:
        load = os.getloadavg()[0]
        print(f"load average {load:.1f}; {opts.commands} commands per round, {opts.rounds} rounds")

        def ok(result: object) -> object:
            assert getattr(result, "exit_code", 1) == 0, result
            return result

        conn = ssh.get_connection(cfg)
        compare(
            "in-process (worker)",
            opts.commands,
            opts.rounds,
            lambda: ok(run_powershell(conn, SCRIPT, remote_os="posix")),
            lambda: ok(run_powershell(conn, SCRIPT, remote_os="posix", warm=True)),
        )
        ssh.close_all()

        data = work / "data"
        helper = persist.WarmConnection(cfg, data, 300)
        compare(
            "through the warm helper",
            opts.commands,
            opts.rounds,
            lambda: ok(run_powershell(helper, SCRIPT, remote_os="posix")),
            lambda: ok(run_powershell(helper, SCRIPT, remote_os="posix", warm=True)),
        )

        env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
        env.update(server.env(known))
        env["WIN_AUTOMATION_DATA_DIR"] = str(data)
        env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(work / "artifacts")
        cli_times: dict[str, list[float]] = {"false": [], "true": []}
        for _ in range(opts.cli_runs + 1):
            for warm in ("false", "true"):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "win_automation", "ssh", "run", "--", SCRIPT],
                    env={**env, "WIN_AUTOMATION_SSH_WARM_POWERSHELL": warm},
                    cwd=work,
                    capture_output=True,
                    check=True,
                )
                assert done.stdout.startswith(b"Write-Output"), done
                cli_times[warm].append((time.perf_counter() - started) * 1000)
        a = statistics.median(cli_times["false"][1:])  # the first run of each starts its helper
        b = statistics.median(cli_times["true"][1:])
        print(
            f"whole `ssh run` process through a warm helper: per-command {a:.1f} ms,"
            f" warm session {b:.1f} ms: warm is {a / b:.2f}x faster"
        )
        persist_wire.stop_helpers(data)
    finally:
        ssh.close_all()
        server.close()


if __name__ == "__main__":
    main()
