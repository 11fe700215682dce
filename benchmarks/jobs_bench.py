"""Job runtime speed: workflow overhead of the local engine, and manifest hashing of a 1 GiB file.

Run: .venv/bin/python benchmarks/jobs_bench.py [--jobs 300] [--size-mib 1024]

1. Workflow overhead: a 3-step no-op workflow run through LocalEngine (journal included: job and
   step states, events, outputs; WAL, synchronous=NORMAL), median per job; target < 5 ms. Peer
   in the same run: a bare SQLite insert-and-commit loop on a file with the same settings, and
   the same loop with synchronous=FULL, to show what an fsync per commit would cost. The same
   workflow with one process per job (forked: the journal opened and closed each time, as by the
   CLI's calls through the warm CLI process).
2. Hashing: `artifacts.hash_file` on a 1 GiB file (page cache warm) against the CPU's own limit,
   `openssl speed -elapsed -evp sha256` on 1 MiB blocks held in memory (wall clock, like ours),
   and against `sha256sum` and `openssl dgst -sha256` on the same file (the same work as ours:
   from the page cache), and against hashlib on the same bytes already in the process's memory
   (what RAM, rather than the CPU's cache, allows); rounds interleaved, medians; target >= 0.9x
   OpenSSL's rate. The hashing runs in a child process that reports its peak RSS growth
   (resource.getrusage) during hashing: target < 64 MiB.
3. Verifying a folder: `artifacts.hash_files` (what `artifacts verify` runs) on the same bytes as
   four files of a quarter each, one thread per CPU, against `sha256sum` on the four files.

The machine has 2 cores shared with other work, so the figures are noisy; ratios are measured in
one run, interleaved, so that load affects both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from win_automation.config import load_config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.local import LocalEngine

CHILD_HASH = """
import json, resource, sys, time
from pathlib import Path
from win_automation.artifacts.hashing import hash_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
size, sha = hash_file(Path(sys.argv[1]))
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "sha256": sha, "size": size, "rss_growth_kib": after - before,
                  "peak_rss_kib": after}))
"""

CHILD_IN_RAM = """
import hashlib, sys, time
data = bytearray(open(sys.argv[1], "rb").read())
view = memoryview(data)
start = time.perf_counter()
digest = hashlib.sha256()
for at in range(0, len(data), 1 << 20):
    digest.update(view[at : at + (1 << 20)])
print(time.perf_counter() - start)
"""


CHILD_HASH_FILES = """
import json, sys, time
from pathlib import Path
from win_automation.artifacts.hashing import hash_files
start = time.perf_counter()
hashed = hash_files([Path(p) for p in sys.argv[1:]])
print(json.dumps({"seconds": time.perf_counter() - start, "sha256": [sha for _, sha in hashed]}))
"""


class Nothing(BaseModel):
    pass


def noop(inp: Nothing, ctx: StepContext) -> Nothing:
    return Nothing()


NOOP = Workflow(
    name="bench-noop",
    input=Nothing,
    steps=(
        Step("one", noop, Nothing),
        Step("two", noop, Nothing, parents=("one",)),
        Step("three", noop, Nothing, parents=("two",)),
    ),
)


def engine_per_job(tmp: Path, jobs: int) -> float:
    env = {"WIN_AUTOMATION_DATA_DIR": str(tmp / "data"), "WIN_AUTOMATION_ARTIFACT_OUT": str(tmp / "art")}
    engine = LocalEngine(load_config(None, env).config)
    times = []
    for _ in range(jobs):
        start = time.perf_counter()
        outcome = engine.run(NOOP, Nothing())
        times.append(time.perf_counter() - start)
        assert outcome.state.value == "succeeded"
    engine.close()
    return statistics.median(times)


def process_per_job(tmp: Path, jobs: int) -> tuple[float, float]:
    """The CLI's path: each job in a process of its own (forked, as the warm CLI process does),
    which opens the journal, runs the job and closes the journal (the last connection's close
    checkpoints the WAL). Medians of the wall time from the engine's creation to its close, and
    of the child's whole CPU time (user + system, fork included), which the disk's load moves
    less than the wall time (the WAL's syncs)."""
    env = {"WIN_AUTOMATION_DATA_DIR": str(tmp / "data"), "WIN_AUTOMATION_ARTIFACT_OUT": str(tmp / "art")}
    config = load_config(None, env).config
    walls, cpus = [], []
    for _ in range(jobs):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read)
            start = time.perf_counter()
            engine = LocalEngine(config)
            ok = engine.run(NOOP, Nothing()).state.value == "succeeded"
            engine.close()
            os.write(write, f"{time.perf_counter() - start if ok else -1}".encode())
            os._exit(0)
        os.close(write)
        seconds = float(os.read(read, 64))
        os.close(read)
        _, _, usage = os.wait4(pid, 0)
        assert seconds > 0, "the job did not succeed"
        walls.append(seconds)
        cpus.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def sqlite_per_commit(path: Path, rows: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, job TEXT, state TEXT, ts REAL)")
    times = []
    for i in range(rows):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (job, state, ts) VALUES (?, ?, ?)", (f"job-{i}", "queued", time.time()))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(times)


def make_file(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as handle:
        for _ in range(mib):
            handle.write(block)


def sha256sum(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout.split()[0]


def openssl_dgst(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", str(path)], capture_output=True, check=True)
    return time.perf_counter() - start


def openssl_speed() -> float:
    """OpenSSL's in-memory sha256 rate on 1 MiB blocks, wall clock (-elapsed), in MiB/s."""
    out = subprocess.run(
        ["openssl", "speed", "-elapsed", "-seconds", "2", "-bytes", str(1 << 20), "-evp", "sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kilobytes_per_s = float(out.strip().splitlines()[-1].split()[-1].rstrip("k"))
    return kilobytes_per_s * 1000 / (1 << 20)


def ours(path: Path) -> dict[str, float | str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD_HASH, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def quarters(path: Path, mib: int) -> list[Path]:
    """The file's bytes again as four files of a quarter each."""
    parts = [path.with_name(f"quarter{i}.bin") for i in range(4)]
    for part in parts:
        make_file(part, mib // 4)
    return parts


def folder_ours(parts: list[Path]) -> tuple[float, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD_HASH_FILES, *map(str, parts)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    return float(result["seconds"]), list(result["sha256"])


def folder_sha256sum(parts: list[Path]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    out = subprocess.run(["sha256sum", *map(str, parts)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, [line.split()[0] for line in out.stdout.splitlines()]


def in_ram(path: Path) -> float:
    """Seconds hashlib takes for the file's bytes already in this process's memory."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD_IN_RAM, str(path)], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as name:
        tmp = Path(name)
        engine_per_job(tmp / "warm", 20)
        job = engine_per_job(tmp, args.jobs)
        per_process = process_per_job(tmp / "forked", min(args.jobs, 200))
        normal = sqlite_per_commit(tmp / "normal.sqlite3", args.jobs, "NORMAL")
        full = sqlite_per_commit(tmp / "full.sqlite3", min(args.jobs, 200), "FULL")
        print(f"3-step no-op workflow, local engine + journal   median {job * 1000:7.3f} ms/job (target < 5)")
        wall, cpu = per_process
        print(f"the same, a process per job (fork, open, close) median {wall * 1000:7.3f} ms/job", end="")
        print(f", its CPU {cpu * 1000:.3f} ms")
        print(f"bare SQLite insert+commit (WAL, sync=NORMAL)    median {normal * 1000:7.3f} ms/commit")
        print(f"bare SQLite insert+commit (WAL, sync=FULL)      median {full * 1000:7.3f} ms/commit")
        print(f"ratio engine job / bare commit: {job / normal:.1f}x (a job makes 8 journal commits)")
        print(f"an fsync per commit would cost {full / normal:.1f}x per commit; the journal uses NORMAL\n")

        path = tmp / "artifact.bin"
        make_file(path, args.size_mib)
        sha256sum(path)  # warm the page cache
        parts = quarters(path, args.size_mib)
        folder_sha256sum(parts)  # warm the page cache
        theirs_s, ours_s, growth, openssl, dgst_s, ram_s = [], [], [], [], [], []
        folder_s, folder_theirs_s = [], []
        for _ in range(args.rounds):
            seconds, reference = sha256sum(path)
            theirs_s.append(seconds)
            result = ours(path)
            assert result["sha256"] == reference, "hash_file disagrees with sha256sum"
            ours_s.append(float(result["seconds"]))
            growth.append(float(result["rss_growth_kib"]) / 1024)
            peak = float(result["peak_rss_kib"]) / 1024
            openssl.append(openssl_speed())
            dgst_s.append(openssl_dgst(path))
            ram_s.append(in_ram(path))
            seconds, reference_parts = folder_sha256sum(parts)
            folder_theirs_s.append(seconds)
            seconds, sums = folder_ours(parts)
            assert sums == reference_parts, "hash_files disagrees with sha256sum"
            folder_s.append(seconds)
        size_mib = args.size_mib
        a, b = size_mib / statistics.median(ours_s), size_mib / statistics.median(theirs_s)
        c = statistics.median(openssl)
        print(f"hash_file  {size_mib} MiB: median {size_mib / a:6.3f} s  {a:7.1f} MiB/s")
        print(f"sha256sum  {size_mib} MiB: median {size_mib / b:6.3f} s  {b:7.1f} MiB/s")
        d = size_mib / statistics.median(dgst_s)
        print(f"openssl dgst -sha256 on the file: median {size_mib / d:6.3f} s  {d:7.1f} MiB/s")
        print(f"openssl speed -elapsed -evp sha256 (1 MiB blocks in memory): median {c:7.1f} MiB/s")
        e = size_mib / statistics.median(ram_s)
        print(f"hashlib on the same bytes in RAM (a bytearray, 1 MiB updates): median {e:7.1f} MiB/s")
        print(f"OpenSSL on the file / in memory: {d / c:.2f}x; ours / openssl dgst: {a / d:.2f}x")
        print(f"hashlib on {size_mib} MiB in RAM / openssl speed: {e / c:.2f}x (the cache, not the file)")
        print(f"throughput ratio ours/openssl: {a / c:.2f}x (target >= 0.9x); ours/sha256sum: {a / b:.2f}x")
        rounds = sorted(size_mib / s / o for s, o in zip(ours_s, openssl, strict=True))
        listed = ", ".join(f"{r:.2f}" for r in rounds)
        print(f"per-round ours/openssl (openssl run right after ours): {listed}")
        f, g = size_mib / statistics.median(folder_s), size_mib / statistics.median(folder_theirs_s)
        cpus = len(os.sched_getaffinity(0))
        print(f"verify a folder: hash_files on 4 x {size_mib // 4} MiB ({cpus} CPUs): median {f:7.1f} MiB/s")
        print(f"sha256sum on the same 4 files: median {g:7.1f} MiB/s")
        print(f"folder ratio ours/openssl speed: {f / c:.2f}x (target >= 0.9x); ours/sha256sum: {f / g:.2f}x")
        print(f"load average {os.getloadavg()[0]:.2f} (2 cores, shared)")
        print(
            f"peak RSS growth while hashing: {max(growth):.1f} MiB (target < 64 MiB); peak RSS {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
