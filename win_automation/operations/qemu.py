"""Host-side control of a QEMU VM through its monitor (QMP): screen, snapshots, run state.

    qemu = Qemu(config)                          # needs vm.qmp_socket, else ConfigError (exit 2)
    shot = qemu.screenshot(Path("screen.png"))   # Screenshot(path, width, height, size_bytes, ...)
    qemu.snapshot_save("clean")                  # also snapshot_load / snapshot_delete / snapshots()
    state = status(config)                       # VmStatus: running, paused, guest crashed

- `screendump` makes QEMU itself write the PNG, so the path must be one the QEMU process can write.
  It works whatever the guest shows (lock screen, before login, a hung guest). The file is written
  to a temporary name beside the target, checked to be a PNG, then renamed: a failed screenshot
  leaves no file.
- Snapshots are QEMU's job-based `snapshot-save`/`-load`/`-delete` over every writable qcow2 disk
  (the VM state goes to the first), each followed by polling `query-jobs` until the job concludes
  and `job-dismiss`. A name that already exists (save) or does not (load, delete) is refused before
  any job starts; QEMU keeps each operation all-or-nothing. QEMU's monitor does not answer while it
  saves or loads, so the command and the polls are bounded by vm.snapshot_timeout (not
  vm.qmp_timeout); one that gives up leaves the job to QEMU, and the next snapshot command (list,
  save, load, delete) dismisses it once concluded, logging how it ended.
- `check` is doctor's `vm` item: skipped without vm.qmp_socket, else QEMU's run state.
- `keep_screen` is the engines' hook for GUI jobs (before.png, after.png, failure-STEP.png): a no-op
  without `vm.qmp_socket`, and never fails the job (a warning is logged instead).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from win_automation.artifacts.store import TEMP_PREFIX, ArtifactWriter
from win_automation.config import Config
from win_automation.errors import (
    ConfigError,
    ConnectError,
    NotFoundError,
    OperationTimeout,
    ServiceRefused,
    UsageError,
    WinAutomationError,
)

if TYPE_CHECKING:
    from win_automation.adapters.qemu import QmpSession
    from win_automation.operations.checks import CheckResult

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would allow a final newline
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CRASHED = frozenset({"guest-panicked", "internal-error", "io-error", "shutdown"})
JOB_POLL = 0.05
JOB_PREFIX = "wa-snapshot-"  # the ids of the jobs this module starts


@dataclass(frozen=True)
class VmStatus:
    socket: str
    status: str  # QEMU's run state: running, paused, prelaunch, guest-panicked, ...
    running: bool
    crashed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Screenshot:
    path: str
    width: int
    height: int
    size_bytes: int
    duration_ms: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Snapshot:
    name: str
    created_at: float
    vm_state_bytes: int
    vm_clock_seconds: float
    devices: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices)}


def validate_snapshot_name(name: str) -> str:
    """A letter, then up to 63 letters, digits, `.`, `_` or `-` (QEMU also matches snapshots by
    numeric id, so a name of digits would be ambiguous)."""
    if not _NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 80 else f"{name[:64]!r}... ({len(name)} characters)"
        raise UsageError(
            f"snapshot name {shown}: must start with a letter and hold at most 64 letters, digits,"
            " '.', '_' or '-'"
        )
    return name


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; WinAutomationError when the file is not a PNG."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)
    except OSError as exc:
        raise WinAutomationError(f"screenshot {path}: cannot read it: {exc.strerror or exc}") from None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise WinAutomationError(f"screenshot {path}: QEMU did not write a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def status(config: Config) -> VmStatus:
    """The VM's run state from `query-status` (for `vm status` and `doctor`); ConfigError without
    vm.qmp_socket, ConnectError (exit 3) when QEMU cannot be reached."""
    return Qemu(config).status()


class Qemu:
    """The QEMU process behind the VM, reached through `vm.qmp_socket`."""

    def __init__(self, config: Config) -> None:
        socket = config.vm.qmp_socket
        if socket is None:
            raise ConfigError(
                "vm.qmp_socket is not set: give QEMU's QMP socket (WIN_AUTOMATION_VM_QMP_SOCKET, or"
                " vm.qmp_socket in the config file)"
            )
        self.socket = socket
        self.timeout = config.vm.qmp_timeout
        self.snapshot_timeout = config.vm.snapshot_timeout

    def _session(self) -> Any:
        from win_automation.adapters.qemu import qmp_session  # asyncio and qemu.qmp: only when used

        return qmp_session(self.socket, timeout=self.timeout)

    def status(self) -> VmStatus:
        with self._session() as qmp:
            answer = qmp.execute("query-status")
        state = str(answer.get("status", "unknown"))
        return VmStatus(str(self.socket), state, bool(answer.get("running")), state in CRASHED)

    def screenshot(self, out: Path) -> Screenshot:
        """The VM's screen as a PNG at `out` (written by QEMU; absolute path; no file on failure)."""
        target = out.expanduser().absolute()
        if target.is_dir():
            raise UsageError(f"--out: {target} is a folder; give a file name")
        if not target.parent.is_dir():
            raise UsageError(f"--out: folder {target.parent} does not exist")
        temp = target.with_name(f"{TEMP_PREFIX}{target.name}.{uuid.uuid4().hex[:12]}.png")
        started = time.monotonic()
        try:
            with self._session() as qmp:
                try:
                    qmp.execute("screendump", {"filename": str(temp), "format": "png"})
                except WinAutomationError as exc:
                    if isinstance(exc, ConnectError | OperationTimeout | ServiceRefused):
                        raise
                    raise WinAutomationError(
                        f"{exc} (the QEMU process writes the file: give a folder it can write)"
                    ) from exc
            width, height = png_size(temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        duration_ms = round((time.monotonic() - started) * 1000)
        return Screenshot(str(target), width, height, target.stat().st_size, duration_ms)

    # -- snapshots -------------------------------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        with self._session() as qmp:
            found = _snapshots(qmp)
            _dismiss_leftovers(qmp)
            return found

    def snapshot_save(self, name: str) -> Snapshot:
        validate_snapshot_name(name)
        with self._session() as qmp:
            disks = _disks(qmp)
            if any(s.name == name for s in _snapshots(qmp)):
                raise WinAutomationError(
                    f"snapshot {name!r} already exists; delete it first (`win-automation vm snapshot"
                    f" delete {name}`) or choose another name"
                )
            self._job(qmp, "snapshot-save", name, vmstate=disks[0], devices=disks)
            return next(s for s in _snapshots(qmp) if s.name == name)

    def snapshot_load(self, name: str) -> Snapshot:
        validate_snapshot_name(name)
        with self._session() as qmp:
            found = self._existing(qmp, name)
            self._job(qmp, "snapshot-load", name, vmstate=found.devices[0], devices=list(found.devices))
            return found

    def snapshot_delete(self, name: str) -> Snapshot:
        validate_snapshot_name(name)
        with self._session() as qmp:
            found = self._existing(qmp, name)
            self._job(qmp, "snapshot-delete", name, devices=list(found.devices))
            return found

    def require_snapshot(self, name: str) -> Snapshot:
        """The snapshot `name`, or NotFoundError naming the ones there are."""
        validate_snapshot_name(name)
        with self._session() as qmp:
            return self._existing(qmp, name)

    def _existing(self, qmp: QmpSession, name: str) -> Snapshot:
        present = _snapshots(qmp)
        for snap in present:
            if snap.name == name:
                return snap
        known = ", ".join(s.name for s in present) or "none"
        raise NotFoundError(f"snapshot {name!r} does not exist (snapshots: {known})")

    def _job(self, qmp: QmpSession, command: str, tag: str, **args: Any) -> None:
        """Start QEMU job `command` and wait until it concludes; dismiss it; raise its error. The
        monitor is silent while QEMU saves or loads: every wait is bounded by vm.snapshot_timeout."""
        _dismiss_leftovers(qmp)
        job_id = f"wa-{command}-{uuid.uuid4().hex[:8]}-{tag}"
        deadline = time.monotonic() + self.snapshot_timeout
        extra = {"op": command, "tag": tag, "job": job_id}
        gave_up = OperationTimeout(
            f"{command} {tag!r}: QEMU job {job_id} did not conclude within {self.snapshot_timeout:g}s"
            " (vm.snapshot_timeout); QEMU may still complete it: check `win-automation vm snapshot"
            " list` once QEMU answers"
        )
        try:
            qmp.execute(command, {"job-id": job_id, "tag": tag, **args}, timeout=self.snapshot_timeout)
            log.info("QEMU job started", extra=extra)
            while True:
                left = max(deadline - time.monotonic(), JOB_POLL)
                job = next((j for j in qmp.execute("query-jobs", timeout=left) if j["id"] == job_id), None)
                if job is None:
                    raise WinAutomationError(f"{command} {tag!r}: QEMU job {job_id} disappeared")
                if job["status"] == "concluded":
                    break
                if time.monotonic() > deadline:
                    raise gave_up
                qmp.sleep(JOB_POLL)
        except OperationTimeout:  # the command's, a poll's (a silent monitor), or the deadline's
            raise gave_up from None
        qmp.execute("job-dismiss", {"id": job_id})
        if job.get("error"):
            raise WinAutomationError(f"{command} {tag!r}: {job['error']}")
        log.info("QEMU job concluded", extra=extra)


def _dismiss_leftovers(qmp: QmpSession) -> None:
    """Dismiss the concluded jobs of snapshot commands that stopped waiting (a timeout), logging
    how each ended: QEMU keeps a concluded job until it is dismissed."""
    for job in qmp.execute("query-jobs"):
        if job["id"].startswith(JOB_PREFIX) and job["status"] == "concluded":
            qmp.execute("job-dismiss", {"id": job["id"]})
            outcome = f"failed: {job['error']}" if job.get("error") else "succeeded"
            log.warning(
                "dismissed the QEMU job of a snapshot command that stopped waiting",
                extra={"op": "qmp", "job": job["id"], "outcome": outcome},
            )


def _disks(qmp: QmpSession) -> list[str]:
    """Node names of the writable disks, each of which must be qcow2 (snapshots need it)."""
    nodes: list[str] = []
    for device in qmp.execute("query-block"):
        inserted = device.get("inserted")
        if not inserted or inserted.get("ro"):
            continue
        name = device.get("device") or device.get("qdev") or inserted["node-name"]
        if inserted.get("drv") != "qcow2":
            raise WinAutomationError(
                f"disk {name} is {inserted.get('drv')}, which cannot hold snapshots: use a qcow2 image"
            )
        nodes.append(inserted["node-name"])
    if not nodes:
        raise WinAutomationError("the VM has no writable qcow2 disk to hold snapshots")
    return nodes


def _snapshots(qmp: QmpSession) -> list[Snapshot]:
    """Internal snapshots by name; `devices` lists the nodes holding each, the VM state's first."""
    found: dict[str, dict[str, Any]] = {}
    for device in qmp.execute("query-block"):
        inserted = device.get("inserted") or {}
        node = inserted.get("node-name")
        for snap in (inserted.get("image") or {}).get("snapshots", []):
            entry = found.setdefault(snap["name"], {"snap": snap, "devices": []})
            if snap.get("vm-state-size", 0) > 0:
                entry["snap"] = snap
                entry["devices"].insert(0, node)
            else:
                entry["devices"].append(node)
    return sorted(
        (
            Snapshot(
                name=name,
                created_at=e["snap"].get("date-sec", 0) + e["snap"].get("date-nsec", 0) / 1e9,
                vm_state_bytes=int(e["snap"].get("vm-state-size", 0)),
                vm_clock_seconds=e["snap"].get("vm-clock-sec", 0) + e["snap"].get("vm-clock-nsec", 0) / 1e9,
                devices=tuple(e["devices"]),
            )
            for name, e in found.items()
        ),
        key=lambda s: s.created_at,
    )


def check(config: Config, timeout: float) -> CheckResult:
    """doctor's `vm` item: QEMU's run state through QMP (skipped without vm.qmp_socket)."""
    from win_automation.operations.checks import CheckResult

    socket = config.vm.qmp_socket
    if socket is None:
        return CheckResult("vm", "skipped", "not configured (vm.qmp_socket unset): no host-side VM control")
    started = time.monotonic()
    fix = "start the VM (systemctl start win-automation-vm, or your QEMU command) or correct vm.qmp_socket"
    if not socket.exists():  # no connect retries for what is plainly absent
        return CheckResult(
            "vm", "fail", f"no socket {socket}", f"QEMU's QMP socket {socket} does not exist", fix
        )
    quick = config.model_copy(
        update={"vm": config.vm.model_copy(update={"qmp_timeout": min(timeout, config.vm.qmp_timeout)})}
    )
    try:
        state = Qemu(quick).status()
    except WinAutomationError as exc:
        from win_automation.adapters.qemu import NotASocket

        if isinstance(exc, ServiceRefused | NotASocket):  # not QMP's answers, or not even a socket
            fix = "point vm.qmp_socket at QEMU's own -qmp socket (nothing else may listen there)"
        return CheckResult(
            "vm", "fail", type(exc).__name__, str(exc), fix, round((time.monotonic() - started) * 1000, 2)
        )
    ms = round((time.monotonic() - started) * 1000, 2)
    if state.running:
        return CheckResult("vm", "pass", f"QEMU {state.status} ({socket})", latency_ms=ms)
    if state.crashed:
        return CheckResult(
            "vm",
            "fail",
            state.status,
            f"the guest stopped: QEMU reports {state.status}",
            "look at `win-automation vm screenshot`, then restart the VM or load a snapshot",
            ms,
        )
    return CheckResult(
        "vm",
        "fail",
        state.status,
        f"the VM is not running: QEMU reports {state.status}",
        "resume it (QMP `cont`) or restart the VM",
        ms,
    )


SCREEN = "screen"


def writer_types(types: tuple[str, ...], gui: bool) -> tuple[str, ...]:
    """A job's artifact types: its workflow's, and `screen` for a GUI workflow (keep_screen)."""
    return (*types, SCREEN) if gui and SCREEN not in types else types


def keep_screen(config: Config, writer: ArtifactWriter, name: str) -> bool:
    """Keep the VM's screen as artifact `name` (type `screen`) of a GUI job. A no-op without
    vm.qmp_socket; a failure is logged, never raised: evidence must not fail the job."""
    if config.vm.qmp_socket is None:
        return False
    extra = {"op": "keep-screen", "job_id": writer.job_id, "file": name}
    try:
        writer.folder.mkdir(parents=True, exist_ok=True)
        shot = Qemu(config).screenshot(writer.folder / f"{TEMP_PREFIX}screen-{uuid.uuid4().hex[:8]}.png")
        try:
            writer.write_file(SCREEN, name, Path(shot.path))
        finally:
            Path(shot.path).unlink(missing_ok=True)
    except (WinAutomationError, OSError) as exc:
        log.warning("could not keep the VM's screen", extra={**extra, "err": str(exc)})
        return False
    return True
