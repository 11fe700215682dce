"""QMP against a real QEMU (tests/fixture_qemu.py): screenshots, snapshots, run state, and the
faults: a missing socket, a dead QEMU, a stopped QEMU, snapshots that exist or do not."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest
from fixture_qemu import SCREEN, QemuVm, start_qemu

from win_automation.config import Config, load_config
from win_automation.errors import (
    ConfigError,
    ConnectError,
    NotFoundError,
    OperationTimeout,
    UsageError,
    WinAutomationError,
)
from win_automation.operations.qemu import Qemu, status, validate_snapshot_name


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines): a full decode of the chunks and the zlib stream."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def config_for(env: dict[str, str], **extra: str) -> Config:
    return load_config(None, {**env, **extra}).config


@pytest.fixture
def vm_config(qemu_vm: QemuVm, cli_env: dict[str, str]) -> Config:
    return config_for(cli_env, **qemu_vm.env())


def test_screenshot_is_a_png_of_the_screen(qemu_vm: QemuVm, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "screen.png"
    done = cli("vm", "screenshot", "--out", str(out), "--json", env=qemu_vm.env())
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    width, height, raw = decode_png(out.read_bytes())
    assert (width, height) == SCREEN == (result["width"], result["height"])
    assert len(raw) == height * (1 + width * 3)  # RGB rows, each with its filter byte
    assert result["path"] == str(out) and result["size_bytes"] == out.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_screenshot_default_name_and_bad_out(qemu_vm: QemuVm, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = cli("vm", "screenshot", env=qemu_vm.env())
    assert done.code == 0, done.stderr
    assert len(list(tmp_path.glob("vm-screen-*.png"))) == 1
    for bad in (str(tmp_path / "nowhere" / "x.png"), str(tmp_path)):
        done = cli("vm", "screenshot", "--out", bad, env=qemu_vm.env())
        assert done.code == 2 and done.stderr.startswith("error: --out:") and done.stderr.count("\n") == 1


def test_screenshot_where_qemu_cannot_write(vm_config: Config) -> None:
    """/proc exists and is a folder, but nobody (root included) can create a file there."""
    with pytest.raises(
        WinAutomationError, match=r"QEMU refused screendump: .*'/proc/.*the QEMU process writes the file"
    ):
        Qemu(vm_config).screenshot(Path("/proc/wa-screen.png"))
    assert not list(Path("/proc").glob("*wa-screen*"))


def test_status(vm_config: Config, qemu_vm: QemuVm, cli) -> None:  # type: ignore[no-untyped-def]
    from win_automation.operations.vm import Vm

    assert Vm(vm_config).qemu.status() == status(vm_config)  # what a step reaches as ctx.vm.qemu
    state = status(vm_config)
    assert (state.status, state.running, state.crashed) == ("prelaunch", False, False)
    done = cli("vm", "status", "--json", env=qemu_vm.env())
    assert done.code == 0 and json.loads(done.stdout)["status"] == "prelaunch"


def test_snapshot_save_list_load_delete(qemu_vm: QemuVm, cli) -> None:  # type: ignore[no-untyped-def]
    env = qemu_vm.env()
    assert cli("vm", "snapshot", "save", "clean", env=env).code == 0
    listed = json.loads(cli("vm", "snapshot", "list", "--json", env=env).stdout)
    assert [s["name"] for s in listed] == ["clean"]
    assert listed[0]["vm_state_bytes"] > 0 and abs(listed[0]["created_at"] - time.time()) < 60
    assert "clean" in cli("vm", "snapshot", "list", env=env).stdout

    again = cli("vm", "snapshot", "save", "clean", env=env)
    assert again.code == 1 and "already exists" in again.stderr and again.stderr.count("\n") == 1

    loaded = cli("vm", "snapshot", "load", "clean", "--json", env=env)
    assert loaded.code == 0 and json.loads(loaded.stdout)["action"] == "loaded"

    assert cli("vm", "snapshot", "delete", "clean", env=env).code == 0
    assert json.loads(cli("vm", "snapshot", "list", "--json", env=env).stdout) == []
    for verb in ("load", "delete"):
        missing = cli("vm", "snapshot", verb, "clean", env=env)
        assert missing.code == 1 and "does not exist" in missing.stderr


def test_load_restores_the_disk(vm_config: Config, qemu_vm: QemuVm) -> None:
    """A snapshot holds the disk: bytes written after it are gone once it is loaded."""
    from win_automation.adapters.qemu import qmp_session

    qemu = Qemu(vm_config)
    qemu.snapshot_save("before-write")
    with qmp_session(qemu_vm.socket, timeout=10) as qmp:
        qmp.execute("human-monitor-command", {"command-line": 'qemu-io scratch "write -P 0xab 0 64k"'})
        read = qmp.execute("human-monitor-command", {"command-line": 'qemu-io scratch "read -P 0xab 0 64k"'})
        assert "Pattern verification failed" not in read
    qemu.snapshot_load("before-write")
    with qmp_session(qemu_vm.socket, timeout=10) as qmp:
        read = qmp.execute("human-monitor-command", {"command-line": 'qemu-io scratch "read -P 0 0 64k"'})
        assert "Pattern verification failed" not in read
    qemu.snapshot_delete("before-write")


@pytest.mark.parametrize(
    "name", ["", "1", "42", "-x", "a b", "a/b", "x" * 65, "ünï", "a;b", "nl\n", "x\n", "a" * 10_000]
)
def test_bad_snapshot_names(name: str) -> None:
    with pytest.raises(UsageError, match="snapshot name") as raised:
        validate_snapshot_name(name)
    assert len(str(raised.value)) < 250 and "\n" not in str(raised.value)


def test_bad_name_on_the_cli_touches_nothing(qemu_vm: QemuVm, cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("vm", "snapshot", "save", "42", env=qemu_vm.env())
    assert done.code == 2 and done.stderr.startswith("error: snapshot name '42'")
    newline = cli("vm", "snapshot", "save", "nl\n", env=qemu_vm.env())
    assert newline.code == 2 and newline.stderr == (
        "error: snapshot name 'nl\\n': must start with a letter and hold at most 64 letters, digits,"
        " '.', '_' or '-'\n"
    )
    long = cli("vm", "snapshot", "save", "a" * 10_000, env=qemu_vm.env())
    assert long.code == 2 and "(10000 characters)" in long.stderr and len(long.stderr) < 250
    assert json.loads(cli("vm", "snapshot", "list", "--json", env=qemu_vm.env()).stdout) == []


def test_not_configured(cli) -> None:  # type: ignore[no-untyped-def]
    for args in (("vm", "status"), ("vm", "screenshot"), ("vm", "snapshot", "list")):
        done = cli(*args)
        assert done.code == 2 and done.stderr == (
            "error: vm.qmp_socket is not set: give QEMU's QMP socket (WIN_AUTOMATION_VM_QMP_SOCKET,"
            " or vm.qmp_socket in the config file)\n"
        )
    with pytest.raises(ConfigError):
        status(load_config(None, {}).config)


def one_error(stderr: str) -> str:
    """The single `error:` line a failed command ends with (retry warnings may come before it)."""
    assert "Traceback" not in stderr and stderr.count("error: ") == 1, stderr
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


def test_missing_socket_and_dead_qemu(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = cli("vm", "status", env={"WIN_AUTOMATION_VM_QMP_SOCKET": str(tmp_path / "none.sock")})
    assert missing.code == 3 and "no such socket" in one_error(missing.stderr)
    assert "attempt=2" in missing.stderr  # the connect retry policy ran

    dead = start_qemu(tmp_path / "dead")
    dead.process.kill()  # the socket file stays, nobody listens
    dead.process.wait()
    assert dead.socket.exists()
    for args in (("vm", "status"), ("vm", "snapshot", "save", "x"), ("vm", "screenshot")):
        done = cli(*args, env=dead.env())
        assert done.code == 3 and "nothing listens" in one_error(done.stderr)
    assert not list(tmp_path.glob("vm-screen-*"))


def test_a_path_that_is_not_a_socket(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A file, a FIFO, a folder at vm.qmp_socket: one line naming it, exit 3, no connect retries."""
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name, kind in (("file", "a regular file"), ("fifo", "a FIFO"), ("folder", "a directory")):
        env = {"WIN_AUTOMATION_VM_QMP_SOCKET": str(tmp_path / name)}
        done = cli("vm", "status", env=env)
        assert done.code == 3 and done.stderr == (
            f"error: QEMU monitor {tmp_path / name}: {kind}, not a socket (check vm.qmp_socket:"
            " QEMU's -qmp unix:PATH)\n"
        )
        doctor = cli("doctor", "--json", "--check", "vm", env=env)
        item = json.loads(doctor.stdout)["checks"][0]
        assert doctor.code == 1 and item["status"] == "fail" and f"{kind}, not a socket" in item["cause"]
        assert "attempt=" not in doctor.stderr and "point vm.qmp_socket" in item["fix"]


def test_not_a_qmp_socket_and_a_stopped_qemu(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A socket that accepts and never greets (a QEMU stopped with SIGSTOP looks the same)."""
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(path))
    mute.listen(8)
    config = config_for(
        cli_env, WIN_AUTOMATION_VM_QMP_SOCKET=str(path), WIN_AUTOMATION_VM_QMP_TIMEOUT="300ms"
    )
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match=r"no answer to the greeting within 0\.3s"):
            status(config)
        assert time.monotonic() - started < 5
    finally:
        mute.close()

    stopped = start_qemu(tmp_path / "stopped")
    os.kill(stopped.process.pid, signal.SIGSTOP)
    try:
        config = config_for(
            cli_env, WIN_AUTOMATION_VM_QMP_SOCKET=str(stopped.socket), WIN_AUTOMATION_VM_QMP_TIMEOUT="300ms"
        )
        with pytest.raises((OperationTimeout, ConnectError), match=r"no answer|accepts no connection"):
            Qemu(config).snapshots()
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)
        stopped.stop()


def test_qemu_killed_during_a_session(cli_env: dict[str, str], tmp_path: Path) -> None:
    from win_automation.adapters.qemu import qmp_session

    vm = start_qemu(tmp_path / "killed")
    with qmp_session(vm.socket, timeout=5) as qmp:
        vm.process.kill()
        vm.process.wait()
        with pytest.raises(ConnectError, match="lost during query-status"):
            qmp.execute("query-status")


def test_vm_help_lists_only_built_commands(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("vm", "snapshot", "--help").stdout
    assert all(verb in out for verb in ("save", "load", "list", "delete"))
    assert NotFoundError.exit_code == 1


def test_doctor_reports_the_vm(cli, cli_env: dict[str, str], qemu_vm: QemuVm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it runs the guest (cont), then pauses it."""
    from win_automation.adapters.qemu import qmp_session
    from win_automation.operations.qemu import check

    assert check(config_for(cli_env), 1.0).status == "skipped"
    gone = check(config_for(cli_env, WIN_AUTOMATION_VM_QMP_SOCKET=str(tmp_path / "x.sock")), 1.0)
    assert gone.status == "fail" and "does not exist" in gone.cause and "start the VM" in gone.fix
    waiting = check(config_for(cli_env, **qemu_vm.env()), 1.0)
    assert waiting.status == "fail" and waiting.detail == "prelaunch" and "not running" in waiting.cause
    with qmp_session(qemu_vm.socket, timeout=5) as qmp:
        qmp.execute("cont")
    try:
        run = cli("doctor", "--json", "--check", "vm", env=qemu_vm.env())
        item = json.loads(run.stdout)["checks"][0]
        assert (
            run.code == 0 and (item["name"], item["status"]) == ("vm", "pass") and "running" in item["detail"]
        )
    finally:
        with qmp_session(qemu_vm.socket, timeout=5) as qmp:
            qmp.execute("stop")
    paused = cli("doctor", "--json", "--check", "vm", env=qemu_vm.env())
    item = json.loads(paused.stdout)["checks"][0]
    assert paused.code == 1 and item["detail"] == "paused" and "resume it" in item["fix"]
