"""Whole-process latency of one CLI call, ours against OpenSSH, side by side in one run.

    .venv/bin/python benchmarks/cli_latency.py [--runs 15]

Starts the tests' real sshd on loopback (tests/fixture_sshd.py; run as root for its test login)
and times, as whole processes, N rounds of (each round runs every row once, in turn, so a busy
moment on the shared machine hits all rows alike; figures are medians):
- `win-automation ssh run --shell cmd -- 'echo hi'` with ssh.persist 0 (the path before the warm
  connection: paramiko import and SSH handshake in the process),
- the same, cold: no helper and no warm CLI process running (stopped first); the call connects
  itself and starts both as it exits (the row waits, untimed, until they are up),
- the same through the running helper, the CLI in the calling process (`python -c "from
  win_automation.cli.app import main; main()"`: the entry point before the warm CLI process),
- the same as users run it: the launcher, a fork of the warm CLI process, the running helper,
  and again with ssh.warm_powershell on (the helper runs it in its warm PowerShell session: the
  stand-in's interpreter start-up, ~30-40 ms, is no longer paid per command),
- the launcher's own cost: `win-automation --version` through the warm CLI process, next to
  `python -c pass` (the interpreter's start-up, the floor of any Python launcher),
- one-shot OpenSSH `ssh host 'echo hi'`, and OpenSSH with a ControlPersist master running.
Each CLI call is a real job (journal, artifacts, manifest), as users run it. Prints each median,
the ratios the issue sets targets for, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
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

CLI = str(Path(sys.executable).with_name("win-automation"))


def timed(argv: list[str], env: dict[str, str] | None = None, expect: str = "hi\n") -> float:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if out.returncode != 0 or out.stdout != expect:
        raise RuntimeError(f"{argv[:3]} failed ({out.returncode}): {out.stdout!r} {out.stderr[-500:]}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    server = SshServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="wa-cli-latency-"))
    known = server.write_known_hosts(work / "known_hosts")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached after the first call
    base.update(server.env(known))
    base.update(WIN_AUTOMATION_DATA_DIR=str(work / "data"), WIN_AUTOMATION_ARTIFACT_OUT=str(work / "art"))
    warm_env = {**base, "WIN_AUTOMATION_SSH_PERSIST": "10m"}
    today_env = {**base, "WIN_AUTOMATION_SSH_PERSIST": "0"}
    warm_ps_env = {**warm_env, "WIN_AUTOMATION_SSH_WARM_POWERSHELL": "true"}  # a helper of its own
    ssh_run = [CLI, "ssh", "run", "--shell", "cmd", "--", "echo hi"]
    in_process = [sys.executable, "-c", "from win_automation.cli.app import main; main()"]
    in_process_run = [*in_process, *ssh_run[1:]]
    stop = [CLI, "ssh", "persist", "stop", "--all"]
    openssh = [
        "ssh",
        "-p",
        str(server.port),
        "-i",
        str(server.client_key),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
    ]
    control = ["-o", f"ControlPath={work / 'cm'}"]
    from win_automation import __version__

    version = f"win-automation {__version__}\n"
    target = f"{server.user}@127.0.0.1"
    subprocess.run(
        [*openssh, *control, "-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-fN", target], check=True
    )

    def cold() -> float:
        subprocess.run(stop, env=warm_env, capture_output=True, check=True)
        elapsed = timed(ssh_run, warm_env)
        deadline = time.monotonic() + 30  # untimed: the helper it started is up before the next row
        while time.monotonic() < deadline:
            out = subprocess.run(
                [CLI, "ssh", "persist", "status", "--json"], env=warm_env, capture_output=True
            )
            status = json.loads(out.stdout)
            if any(h["alive"] for h in status["helpers"]) and any(
                s["alive"] and s["current"] for s in status["cli_servers"]
            ):
                break
            time.sleep(0.05)
        timed(ssh_run, warm_ps_env)  # untimed: restarts the warm-PowerShell config's own helper
        return elapsed

    rows: dict[str, Callable[[], float]] = {
        "ssh run, ssh.persist 0": lambda: timed(ssh_run, today_env),
        "ssh run, warm helper, CLI in-process": lambda: timed(in_process_run, warm_env),
        "ssh run, warm CLI process + helper": lambda: timed(ssh_run, warm_env),
        "ssh run, warm CLI + helper + warm PS": lambda: timed(ssh_run, warm_ps_env),
        "launcher: --version (warm CLI)": lambda: timed([CLI, "--version"], warm_env, version),
        "python -c pass": lambda: timed([sys.executable, "-c", "pass"], expect=""),
        "openssh one-shot": lambda: timed([*openssh, target, "echo hi"]),
        "openssh ControlPersist": lambda: timed([*openssh, *control, target, "echo hi"]),
        "ssh run, cold (starts helper)": cold,
    }
    load_before = os.getloadavg()
    try:
        for fn in rows.values():  # warm-up: page cache, helper running
            fn()
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, fn in rows.items():
                times[name].append(fn())
    finally:
        subprocess.run(stop, env=warm_env, capture_output=True)
        subprocess.run([*openssh, *control, "-O", "exit", target], capture_output=True)
        server.close()
    load_after = os.getloadavg()
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"whole-process latency, median of {args.runs} interleaved rounds (ms):")
    for name, ms in med.items():
        spread = f"{min(times[name]):.0f}-{max(times[name]):.0f}"
        print(f"  {name:34s} {ms:7.1f}   (range {spread})")
    for label, warm in (
        ("warm CLI + helper", med["ssh run, warm CLI process + helper"]),
        ("warm CLI + helper + warm PS", med["ssh run, warm CLI + helper + warm PS"]),
        ("helper, CLI in-process", med["ssh run, warm helper, CLI in-process"]),
    ):
        one_shot, control_persist = warm / med["openssh one-shot"], warm / med["openssh ControlPersist"]
        print(f"  {label + ' / openssh one-shot':50s} {one_shot:.2f}x  (target <= 1.0x)")
        print(f"  {label + ' / openssh ControlPersist':50s} {control_persist:.2f}x  (target <= 1.5x)")
    launcher_cost = med["launcher: --version (warm CLI)"] - med["python -c pass"]
    print(f"  launcher --version over python -c pass: +{launcher_cost:.1f} ms")
    cold_ratio = med["ssh run, cold (starts helper)"] / med["ssh run, ssh.persist 0"]
    print(f"  cold / ssh.persist 0               {cold_ratio:.2f}x")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores, shared)")


if __name__ == "__main__":
    main()
