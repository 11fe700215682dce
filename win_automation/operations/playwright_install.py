"""`playwright install`: a Playwright server of exactly this client's version on the VM.

The driver (node.exe and playwright-core) comes from the `win_amd64` wheel of the installed
`playwright` version, so the VM needs no Node install and no browser download (Edge is there):

1. the wheel, cached on the host in `<data.dir>/playwright/` (fetched with `pip download
   --platform win_amd64 --only-binary=:all: --no-deps playwright==X` when missing, or copied from
   `--wheel PATH` when offline), checked to be a win_amd64 wheel of the client's major.minor;
2. uploaded with `scripts/windows/launch-server.js` into `playwright.install_dir` over SFTP when
   the VM's copy differs (by sha256), verified;
3. `scripts/windows/Install-PlaywrightServer.ps1` does the rest on the VM (driver, wsPath file,
   server.json, firewall rule scoped to the host, the WinAutomation-Playwright scheduled task,
   start, wait for the port) and answers one JSON line, which holds the wsPath: it is registered
   with the log redactor at once and leaves this module only in the report's `ws_path`.
4. `health` runs against the new server.

A second run changes nothing and says so (`changed` is empty).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from win_automation.adapters import sftp
from win_automation.adapters.playwright import client_version
from win_automation.config import Config
from win_automation.errors import StorageError, UsageError, WinAutomationError
from win_automation.log import register_secret
from win_automation.operations.playwright import PlaywrightHealth, health
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import SCRIPTS_DIR, script_text
from win_automation.regularfiles import NotRegularFile, require_regular

LAUNCH_SERVER = SCRIPTS_DIR / "launch-server.js"
SCRIPT = "Install-PlaywrightServer"
log = logging.getLogger(__name__)


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def pip_download_command(version: str, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
        "--platform", "win_amd64", "--only-binary=:all:", "--no-deps", "--dest", str(dest),
        f"playwright=={version}",
    ]  # fmt: skip


def _shown(command: list[str]) -> str:
    return " ".join(["pip", *command[3:]]).replace(" --disable-pip-version-check --quiet", "")


def check_wheel(path: Path, version: str, option: str = "--wheel") -> str:
    """The wheel's playwright version; UsageError unless it is the win_amd64 wheel of `version`'s
    major.minor with the driver in it."""
    try:
        require_regular(path)  # a FIFO would block the open, a device read without end
    except NotRegularFile as exc:
        raise UsageError(f"{option} {path}: not a regular file ({exc.kind})") from None
    except OSError:
        pass  # the open says what is wrong
    try:
        with zipfile.ZipFile(path) as wheel:
            names = set(wheel.namelist())
            metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
            text = wheel.read(metadata).decode("utf-8", "replace") if metadata else ""
            damaged = wheel.testzip()  # every member's CRC: a bit flip would reach the VM's driver
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise UsageError(f"{option} {path}: not a readable wheel ({exc})") from None
    if damaged is not None:
        raise UsageError(f"{option} {path}: not a readable wheel (bad CRC in {damaged})")
    found = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Version:")), ""
    )
    if "playwright/driver/node.exe" not in names or "playwright/driver/package/package.json" not in names:
        raise UsageError(
            f"{option} {path}: holds no playwright/driver/node.exe: not the win_amd64 wheel; "
            f"fix: {_shown(pip_download_command(version, path.parent))}"
        )
    if minor(found) != minor(version):
        raise UsageError(
            f"{option} {path}: playwright {found or '(no version)'}, but this client is {version}; "
            f"fix: {_shown(pip_download_command(version, path.parent))}"
        )
    return found


def ensure_wheel(config: Config, version: str, given: Path | None = None) -> Path:
    """The win_amd64 wheel of `version` in the host's cache (copied from `given`, or downloaded)."""
    cache = config.data.dir / "playwright"
    if given is not None:
        found = check_wheel(given, version)
        target = cache / f"playwright-{found}-py3-none-win_amd64.whl"
        if not target.exists() or _sha256(target) != _sha256(given):
            _copy_whole(given, target)
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"data.dir: cannot create {cache}: {exc.strerror or exc}") from None
    pattern = f"playwright-{version}-*win_amd64.whl"
    damaged = ""
    if cached := sorted(cache.glob(pattern)):
        try:
            check_wheel(cached[-1], version, option="cached wheel")
            return cached[-1]
        except UsageError as exc:  # a cache: what cannot be read is fetched again
            damaged = f" (the cached one was damaged and is removed: {exc})"
            log.warning(
                "cached wheel damaged; fetching it again", extra={"op": "playwright.install", "err": str(exc)}
            )
            _remove(cached[-1])
    # pip writes into its --dest in place: a temporary folder, so that a download cut short (a
    # full disk, Ctrl-C) leaves no truncated wheel under the name a later run takes
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as temp:
        proc = subprocess.run(
            pip_download_command(version, Path(temp)), capture_output=True, text=True, timeout=600
        )
        fetched = sorted(Path(temp).glob(pattern))
        if proc.returncode == 0 and fetched:
            check_wheel(fetched[-1], version, option="downloaded wheel")
            target = cache / fetched[-1].name
            os.replace(fetched[-1], target)
            return target
    why = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no wheel")
    shown = _shown(pip_download_command(version, cache))
    raise WinAutomationError(
        f"cannot download the win_amd64 wheel of playwright {version}{damaged} ({why.strip()[:200]}); "
        f"fix: on a machine online run `{shown}` and pass the file with --wheel PATH"
    )


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(
            f"data.dir: cannot remove the damaged wheel {path}: {exc.strerror or exc}"
        ) from None


def _copy_whole(source: Path, target: Path) -> None:
    """`source` copied to `target` through a temporary name: a full disk leaves no truncated
    wheel in the cache (a later run would take it for the cached one)."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, temp)
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise StorageError(f"data.dir: cannot copy the wheel to {target}: {exc.strerror or exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _upload_if_changed(vm: Vm, local: Path, remote: str) -> bool:
    if sftp.remote_size(vm.ssh, remote) is not None and vm.sha256(remote) == _sha256(local):
        return False
    vm.put(local, remote)
    return True


@dataclass
class InstallReport:
    """What `playwright install` did; `changed` empty means the VM was already as asked."""

    version: str
    channel: str
    headless: bool
    dir: str
    changed: list[str] = field(default_factory=list)
    task_state: str = ""
    ws_path_new: bool = False
    health: PlaywrightHealth | None = None
    ws_path: SecretStr = field(default=SecretStr(""), repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the wsPath."""
        return {
            "version": self.version,
            "channel": self.channel,
            "headless": self.headless,
            "dir": self.dir,
            "changed": self.changed,
            "unchanged": not self.changed,
            "task_state": self.task_state,
            "ws_path_new": self.ws_path_new,
            "health": None if self.health is None else self.health.as_dict(),
        }


def install(
    config: Config,
    *,
    channel: str = "msedge",
    headless: bool = True,
    rotate: bool = False,
    wheel: Path | None = None,
    allow_from: str | None = None,
    wait_seconds: int = 60,
) -> InstallReport:
    """Install or update the VM's server (idempotent), start it, and check its health."""
    version = client_version()
    local_wheel = ensure_wheel(config, version, wheel)
    vm = Vm(config)
    folder = config.playwright.install_dir.replace("\\", "/").rstrip("/")
    report = InstallReport(version, channel, headless, config.playwright.install_dir)
    if sftp.makedirs(vm.ssh, folder):
        report.changed.append("folder")
    if _upload_if_changed(vm, local_wheel, f"{folder}/{local_wheel.name}"):
        report.changed.append("wheel")
    script_changed = _upload_if_changed(vm, LAUNCH_SERVER, f"{folder}/launch-server.js")
    if script_changed:
        report.changed.append("launch-server.js")
    loopback = config.ssh.forward_services  # reached through the SSH forward: no port to open
    args = (  # positional, in the order of the script's param() block
        config.playwright.install_dir,
        local_wheel.name,
        version,
        channel,
        "true" if headless else "false",
        "127.0.0.1" if loopback else "0.0.0.0",
        str(config.playwright.port),
        "" if loopback else allow_from or "ssh-client",
        "true" if rotate else "false",
        "true" if script_changed else "false",
        str(wait_seconds),
    )
    result = vm.powershell(
        script_text(SCRIPT), args=args, timeout=wait_seconds + 600, display=SCRIPT, live=False
    )
    answer = _answer(result.stdout)
    if not result.ok or answer is None:
        why = (result.stderr.strip().splitlines() or [""])[0]
        if not why:
            why = f"exit code {result.exit_code}, no JSON result line"
        raise WinAutomationError(f"{SCRIPT} failed on the VM: {why}", result=None)
    ws_path = str(answer.get("ws_path") or "")
    register_secret(ws_path)
    report.ws_path = SecretStr(ws_path)
    report.changed += [str(part) for part in answer.get("changed", [])]
    report.task_state = str(answer.get("task_state", ""))
    report.ws_path_new = "ws-path" in report.changed
    checked = config.model_copy(
        update={"playwright": config.playwright.model_copy(update={"ws_path": report.ws_path})}
    )
    report.health = health(checked)
    return report


def _answer(stdout: str) -> dict[str, Any] | None:
    """The script's last line as a JSON object, or None."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) and "ws_path" in value else None
