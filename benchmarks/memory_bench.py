"""Fault figures: peak memory of `ssh run` by output size, and how long a stall or a silent server
takes to fail.

    .venv/bin/python benchmarks/memory_bench.py [--mb 1 500]

Starts the tests' real sshd on loopback (tests/fixture_sshd.py; run as root for its test login).
- memory: runs `win-automation ssh run --shell cmd -- "head -c N /dev/zero | tr '\\0' x"` as a
  real process, the CLI in that process (stdout to /dev/null) for each size and prints its peak
  RSS (getrusage of the child) and the peak per MB of output;
- the largest size again through the warm CLI process the runs started: the peak RSS of the
  launcher and of the forked child that runs the job (from /proc, while the output flows);
- stall: `ssh get` of a 64 MiB file through a proxy that stops forwarding after 1 MiB, with
  ssh.connect_timeout 2s and keepalive 1s (stall bound 2 s): seconds until exit 3;
- no banner: `ssh run` against a server that accepts TCP and never answers, connect_timeout 1s:
  seconds until exit 3 (3 attempts, waits 500 ms and 1 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixture_sshd import SshServer  # noqa: E402
from stall_proxy import StallProxy  # noqa: E402

PEAK = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, code)
"""


# The CLI in the measured process itself (`app.main`, not the launcher): through a warm CLI process
# the job would run in a forked child that getrusage(RUSAGE_CHILDREN) does not see.
IN_PROCESS = "from win_automation.cli.app import main; main()"
PREFIX = [sys.executable, "-c", PEAK, sys.executable, "-c", IN_PROCESS]


def cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[float, int, str]:
    """(seconds, exit code, last stderr line) of one CLI run."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "win_automation", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    lines = done.stderr.strip().splitlines()
    return time.perf_counter() - started, done.returncode, lines[-1] if lines else ""


def _peak_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def served(env: dict[str, str], work: Path, mb: int) -> None:
    """The same through the warm CLI process (started by the runs above): the peak RSS of the
    launcher and of the server's child that runs the job, read from /proc while the output flows."""
    deadline = time.monotonic() + 30
    server_pid = None
    while server_pid is None and time.monotonic() < deadline:
        # The server records its pid (its spare child has the same command line).
        for info in Path(env["WIN_AUTOMATION_DATA_DIR"], "cli-server").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                server_pid = int(json.loads(info.read_text())["pid"])
        time.sleep(0.1)
    if server_pid is None:
        print("  (no warm CLI process started: skipped the served run)")
        return
    command = f"head -c {mb * 1000 * 1000} /dev/zero | tr '\\0' x"
    started = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", command],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        child = launcher = total = 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
            child = max([child, *(_peak_mib(pid) for pid in _children(server_pid))])
            launcher = max(launcher, _peak_mib(proc.pid))
    seconds = time.perf_counter() - started
    print(
        f"  {mb:>5} MB through the warm CLI process: the child's peak RSS {child} MiB, the launcher's"
        f" {launcher} MiB (exit {proc.returncode}, {seconds:.1f} s, {total / 1e6 / seconds:.0f} MB/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, nargs="+", default=[1, 500])
    options = parser.parse_args()
    server = SshServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            known = server.write_known_hosts(work / "known_hosts")
            base = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
            env = {
                **base,
                **server.env(known),
                "WIN_AUTOMATION_DATA_DIR": str(work / "data"),
                "WIN_AUTOMATION_ARTIFACT_OUT": str(work / "artifacts"),
            }
            print("ssh run peak RSS by output size (the whole output streamed to stdout.txt):")
            for mb in options.mb:
                command = f"head -c {mb * 1000 * 1000} /dev/zero | tr '\\0' x"
                started = time.perf_counter()
                done = subprocess.run(
                    [*PREFIX, "ssh", "run", "--shell", "cmd", "--", command],
                    env=env,
                    cwd=work,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                peak, code = (int(x) for x in done.stdout.split())
                seconds = time.perf_counter() - started
                print(
                    f"  {mb:>5} MB: peak RSS {peak} MiB (exit {code}, {seconds:.1f} s,"
                    f" {mb / seconds:.0f} MB/s), {peak / mb:.3f} MiB per MB of output"
                )
            served(env, work, max(options.mb))
            big = server.remote_dir / "stall.bin"
            big.write_bytes(os.urandom(64 << 20))
            proxy = StallProxy(server.port, down_budget=1 << 20)
            stalled = {
                **env,
                **server.env(
                    known,
                    port=proxy.port,
                    host_key_fingerprint=server.fingerprint(),
                    connect_timeout=2,
                    keepalive_interval=1,
                ),
            }
            seconds, code, line = cli(stalled, work, "ssh", "get", str(big), str(work / "stall.bin"))
            proxy.close()
            left = [p.name for p in work.iterdir() if "wa-part" in p.name or p.name == "stall.bin"]
            print(f"stalled download (bound 2 s): exit {code} after {seconds:.1f} s, files left {left}")
            print(f"  {line}")
            silent = StallProxy(server.port, silent=True)
            quiet = {**env, **server.env(known, port=silent.port, connect_timeout=1)}
            seconds, code, line = cli(quiet, work, "ssh", "run", "--shell", "cmd", "--", "echo hi")
            print(
                f"no banner (connect_timeout 1 s): exit {code} after {seconds:.1f} s,"
                f" {silent.accepted} attempts"
            )
            print(f"  {line}")
            silent.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
