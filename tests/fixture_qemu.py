"""A real QEMU for the QMP tests: Debian's qemu-system-x86, no OS, a small qcow2 scratch disk.

The VM starts paused (`-S`, run state `prelaunch`), so it costs no CPU, yet it has a screen to dump
(the std VGA's 640x480 before any guest code runs) and takes real snapshots of its disk, memory
and devices. Fixture `qemu_vm` (one VM per test module; register with `pytest_plugins`).
`start_qemu(folder, random_mib=N)` fills N MiB of guest RAM with random bytes (a `loader` device),
which QEMU cannot compress: a snapshot save or load then takes about 0.2 s per 100 MiB, with its
monitor silent all the while.
"""

from __future__ import annotations

import os
import signal
import socket as pysocket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCREEN = (640, 480)


@dataclass
class QemuVm:
    process: subprocess.Popen[bytes]
    socket: Path
    disk: Path
    folder: Path

    def env(self) -> dict[str, str]:
        return {"WIN_AUTOMATION_VM_QMP_SOCKET": str(self.socket)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_qemu(folder: Path, random_mib: int = 0) -> QemuVm:
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / "scratch.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    socket = folder / "qmp.sock"
    extra: list[str] = []
    if random_mib:
        blob = folder / "random.bin"
        blob.write_bytes(os.urandom(random_mib << 20))
        extra = ["-device", f"loader,file={blob},addr=0x1000000,force-raw=on"]  # at 16 MiB
    with (folder / "qemu.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                str(64 + random_mib),
                "-S",
                "-nodefaults",
                "-vga",
                "std",
                "-display",
                "none",
                "-drive",
                f"file={disk},if=none,id=scratch,format=qcow2",
                "-device",
                "virtio-blk-pci,drive=scratch",
                "-qmp",
                f"unix:{socket},server=on,wait=off",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"QEMU did not start: {(folder / 'qemu.log').read_text()}")
        time.sleep(0.02)
    answering(socket, deadline)
    return QemuVm(process, socket, disk, folder)


def answering(path: Path, deadline: float) -> None:
    """Wait until QEMU's monitor at `path` answers a command: it greets from its own thread at
    once, but commands wait for the main loop (busy copying random_mib into RAM at first)."""
    with pysocket.socket(pysocket.AF_UNIX) as client:
        client.settimeout(max(deadline - time.monotonic(), 1.0))
        client.connect(str(path))
        client.sendall(b'{"execute": "qmp_capabilities"}')
        seen = b""
        while b'"return"' not in seen:
            seen += client.recv(4096) or b'"return"'  # closed: the caller's first command says why


@pytest.fixture(scope="module")
def qemu_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuVm]:
    vm = start_qemu(Path(tmp_path_factory.mktemp("qemu")))
    try:
        yield vm
    finally:
        vm.stop()
        assert os.path.exists(vm.disk)
