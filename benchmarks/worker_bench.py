"""The Hatchet worker against the local engine, on the same workflow definitions.

    .venv/bin/python benchmarks/worker_bench.py [--runs 200] [--sequential 30] [--slots 20]

Runs the no-VM `ping` workflow (three steps: two no-ops and one small artifact write with its
manifest, all journaled) three ways and prints the figures and ratios:

- local, sequential: `LocalEngine.run` in this process, one run after the other;
- worker, sequential: one run at a time through the fake Hatchet engine (tests/fake_hatchet.py,
  real gRPC on loopback) and a real `win-automation worker` process; the time from trigger to
  the engine seeing the run finished, so the per-run overhead of the worker path is the
  difference to the local figure;
- worker, concurrent: `--runs` runs triggered at once, served with `--slots` slots.

The fake engine schedules on a 0.1 s tick at worst and is woken on every event; a real
hatchet-lite adds its own queueing (Postgres) on top, so treat the worker figures as the cost of
our side of the protocol, not of a deployment. The machine is small and shared: expect noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def local_runs(root: Path, count: int) -> list[float]:
    from win_automation.config import load_config
    from win_automation.engines.local import LocalEngine
    from workflows.ping import PingInput, ping

    env = {
        "WIN_AUTOMATION_DATA_DIR": str(root / "local-data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(root / "local-art"),
    }
    engine = LocalEngine(load_config(environ=env).config)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            outcome = engine.run(ping, PingInput(message="bench"))
            times.append(time.perf_counter() - started)
            assert outcome.state.value == "succeeded", outcome
    finally:
        engine.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--slots", type=int, default=20)
    args = parser.parse_args()

    from fake_hatchet import FakeHatchet

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local = local_runs(root, args.sequential)
        local_batch_start = time.perf_counter()
        local_runs(root, args.runs)
        local_throughput = args.runs / (time.perf_counter() - local_batch_start)

        engine = FakeHatchet().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION_", "HATCHET_"))}
        env.update(engine.env())
        env.update(
            {"WIN_AUTOMATION_DATA_DIR": str(root / "data"), "WIN_AUTOMATION_ARTIFACT_OUT": str(root / "art")}
        )
        started = time.perf_counter()
        with (root / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "win_automation", "worker", "--slots", str(args.slots)],
                env=env,
                cwd=root,
                stderr=log,
                stdout=subprocess.DEVNULL,
            )
        try:
            engine.wait_for_worker(60)
            startup = time.perf_counter() - started
            sequential = []
            for _ in range(args.sequential):
                begin = time.perf_counter()
                run_id = engine.trigger("ping", {"message": "bench"}, {})
                assert engine.wait_run(run_id, 60).status == "COMPLETED"
                sequential.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            run_ids = [engine.trigger("ping", {"message": "bench"}, {}) for _ in range(args.runs)]
            for run_id in run_ids:
                assert engine.wait_run(run_id, 300).status == "COMPLETED"
            concurrent = time.perf_counter() - begin
        finally:
            worker.terminate()
            worker.wait(60)
            engine.stop()

    local_ms = statistics.median(local) * 1000
    worker_ms = statistics.median(sequential) * 1000
    throughput = args.runs / concurrent
    local_seq_throughput = 1000 / local_ms
    print(f"ping ({len(local)} sequential runs each, {args.runs} for throughput, {args.slots} worker slots)")
    print(f"  worker start-up (process, SDK import, register, listen): {startup:.2f} s")
    print(
        f"  local engine, sequential:   median {local_ms:7.1f} ms/run  ({local_seq_throughput:6.1f} runs/s)"
    )
    print(f"  worker, sequential:         median {worker_ms:7.1f} ms/run  ({1000 / worker_ms:6.1f} runs/s)")
    print(f"  local engine, {args.runs} in a row: {local_throughput:6.1f} runs/s")
    print(f"  worker, {args.runs} at once:    {throughput:6.1f} runs/s")
    print(f"  per-run overhead of the worker path: {worker_ms - local_ms:+.1f} ms")
    print(f"  ratio worker/local latency:    {worker_ms / local_ms:.2f}x")
    print(f"  ratio worker/local throughput: {throughput / local_throughput:.2f}x")


if __name__ == "__main__":
    main()
