"""QMP: a screenshot through `Qemu.screenshot` (qemu.qmp, a session per call, PNG check, rename)
against the least any client can do (a bare JSON exchange on the unix socket: greeting,
qmp_capabilities, screendump), and snapshot save/load/delete of the tests' paused QEMU.

Run: .venv/bin/python benchmarks/qmp_bench.py [--runs 30]
Target: a screenshot costs at most 3x the bare exchange (the guest's screen is what takes time on
a real VM). Ours and the bare client alternate, so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixture_qemu import start_qemu

from win_automation.config import load_config
from win_automation.operations.qemu import Qemu


def bare_screendump(sock_path: Path, out: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        for command in (
            {"execute": "qmp_capabilities"},
            {"execute": "screendump", "arguments": {"filename": str(out), "format": "png"}},
        ):
            stream.write(json.dumps(command).encode() + b"\n")
            stream.flush()
            answer = json.loads(stream.readline())
            assert "return" in answer, answer


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vm = start_qemu(folder / "vm")
        try:
            qemu = Qemu(load_config(None, {"WIN_AUTOMATION_VM_QMP_SOCKET": str(vm.socket)}).config)
            ours_out, bare_out = folder / "ours.png", folder / "bare.png"
            qemu.screenshot(ours_out), bare_screendump(vm.socket, bare_out)  # warm up
            ours, bare = [], []
            for _ in range(args.runs):
                ours.append(timed(lambda: qemu.screenshot(ours_out)))
                bare.append(timed(lambda: bare_screendump(vm.socket, bare_out)))
            a, b = statistics.median(ours), statistics.median(bare)
            print(f"Qemu.screenshot (qemu.qmp)  median {a * 1000:6.2f} ms over {args.runs} runs")
            print(f"bare QMP screendump         median {b * 1000:6.2f} ms over {args.runs} runs")
            print(f"ratio {a / b:.2f}x (target <= 3.0x)")
            save = timed(lambda: qemu.snapshot_save("bench"))
            load = timed(lambda: qemu.snapshot_load("bench"))
            delete = timed(lambda: qemu.snapshot_delete("bench"))
            print(
                f"snapshot of a 64 MiB guest: save {save * 1000:.0f} ms, load {load * 1000:.0f} ms,"
                f" delete {delete * 1000:.0f} ms"
            )
        finally:
            vm.stop()


if __name__ == "__main__":
    main()
