"""File transfers to and from the VM, verified, and never leaving a partial file under its final name.

`put_file` uploads to `<remote>.wa-part-<id>`, checks the remote size and sha256 (computed on the
VM: `Get-FileHash` on Windows, `sha256sum` on posix) against the local file, then renames it over
`<remote>`. `get_file` downloads to `.<name>.wa-part-<id>` beside the local target (the pipelined
download of win_automation.adapters.sftp), checks the size and the sha256 against the VM's, then
renames it. A failure removes the partial file and raises a one-line error.

Partial names carry an owner tag (win_automation.partfiles: host, pid, random). A process killed
mid-transfer cannot remove its partial file; the next transfer to the same target removes the
stale ones (their writer is dead, or they are older than a day), on the VM for `put`, beside the
local file for `get`. Every SFTP read and write has the adapter's stall bound and the whole
transfer its deadline (win_automation.adapters.sftp).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from win_automation.adapters import sftp
from win_automation.adapters.ssh import SshConnection
from win_automation.errors import CommandFailed, NotFoundError, WinAutomationError
from win_automation.log import Timer
from win_automation.operations import powershell
from win_automation.partfiles import is_stale, owner_tag

log = logging.getLogger(__name__)

Progress = sftp.Progress


class TransferResult(BaseModel):
    direction: str
    local: str
    remote: str
    size_bytes: int
    sha256: str
    duration_ms: int


def _done(direction: str, local: Path, remote: str, size: int, sha256: str, ms: int) -> TransferResult:
    log.info("copied", extra={"op": f"ssh.{direction}", "remote": remote, "bytes": size, "duration_ms": ms})
    return TransferResult(
        direction=direction, local=str(local), remote=remote, size_bytes=size, sha256=sha256, duration_ms=ms
    )


PART = ".wa-part-"


def _remote_split(remote: str) -> tuple[str, str]:
    """(folder, name) of an SFTP path written with `/` or `\\`; folder `.` when relative."""
    cut = max(remote.rfind("/"), remote.rfind("\\"))
    if cut < 0:
        return ".", remote
    return remote[: cut + 1] if cut == 0 else remote[:cut], remote[cut + 1 :]


def remove_stale_remote_parts(conn: SshConnection, remote: str) -> list[str]:
    """Delete the stale partial uploads of `remote` on the VM; the names removed."""
    folder, name = _remote_split(remote)
    removed = []
    for entry, mtime in sftp.list_folder(conn, folder):
        if entry.startswith(f"{name}{PART}") and is_stale(entry, mtime):
            path = entry if folder == "." else f"{folder.rstrip('/')}/{entry}"
            sftp.remove(conn, path)
            removed.append(path)
    if removed:
        log.info("stale partial uploads removed", extra={"op": "ssh.put", "files": len(removed)})
    return removed


def remove_stale_local_parts(local: Path) -> list[Path]:
    """Delete the stale partial downloads of `local` beside it; the paths removed."""
    removed: list[Path] = []
    try:
        candidates = list(local.parent.glob(f".{local.name}{PART}*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_file() and is_stale(path.name, path.stat().st_mtime):
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("stale partial downloads removed", extra={"op": "ssh.get", "files": len(removed)})
    return removed


def _posix_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def windows_path(remote: str) -> str:
    """An SFTP path as Windows writes it: `/C:/x/y` -> `C:\\x\\y`; relative paths stay relative."""
    if len(remote) >= 3 and remote[0] == "/" and remote[2] == ":":
        remote = remote[1:]
    return remote.replace("/", "\\")


def remote_sha256(conn: SshConnection, remote: str, remote_os: str) -> str:
    """The sha256 (lower-case hex) of a remote file, computed on the VM."""
    if remote_os == "posix":
        command = f"sha256sum -- {_posix_quote(remote)}"
    else:
        path = powershell.quote_literal(windows_path(remote))
        script = powershell.wrap_script(f"(Get-FileHash -Algorithm SHA256 -LiteralPath {path}).Hash")
        command = powershell.encoded_command_line(script)
    outcome = conn.exec(command, timeout=600)
    text = powershell.decode_output(outcome.stdout).strip()
    digest = text.split()[0].lower() if text else ""
    if outcome.exit_status != 0 or len(digest) != 64:
        message = powershell.strip_clixml(powershell.decode_output(outcome.stderr)).strip()
        raise CommandFailed(f"cannot hash remote file {remote} on the VM: {message or text}")
    return digest


class _HashingReader:
    """A file wrapper that hashes what paramiko reads from it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def put_file(
    conn: SshConnection, local: Path, remote: str, *, remote_os: str, progress: Progress | None = None
) -> TransferResult:
    """Upload `local` to `remote`, verified; the remote file appears only once whole."""
    try:
        source = local.open("rb")
    except FileNotFoundError as exc:
        raise NotFoundError(f"local file {local} does not exist") from exc
    except OSError as exc:
        raise WinAutomationError(f"cannot read local file {local}: {exc.strerror or exc}") from exc
    partial = f"{remote}{PART}{owner_tag()}"
    with Timer() as timer, source:
        if not local.is_file():
            raise WinAutomationError(f"local path {local} is not a regular file")
        size = os.fstat(source.fileno()).st_size
        remove_stale_remote_parts(conn, remote)
        reader = _HashingReader(source)
        try:
            sftp.upload(conn, reader, partial, size, progress)  # type: ignore[arg-type]
            landed = sftp.remote_size(conn, partial)
            if landed != reader.size:
                raise WinAutomationError(f"upload of {local} is incomplete: {landed} of {reader.size} bytes")
            digest = reader.digest.hexdigest()
            theirs = remote_sha256(conn, partial, remote_os)
            if theirs != digest:
                raise WinAutomationError(
                    f"upload of {local} is corrupt: sha256 {theirs} on the VM, {digest} here"
                )
            sftp.rename(conn, partial, remote)
        except BaseException:
            with contextlib.suppress(Exception):
                sftp.remove(conn, partial)
            raise
    return _done("put", local, remote, reader.size, digest, timer.ms)


def _open_partial(local: Path) -> tuple[Path, BinaryIO]:
    if local.is_dir():
        raise WinAutomationError(f"local path {local} is a directory; name the file to write")
    remove_stale_local_parts(local)
    partial = local.with_name(f".{local.name}{PART}{owner_tag()}")
    try:
        return partial, partial.open("xb")
    except FileNotFoundError as exc:
        raise WinAutomationError(f"cannot write local path {local}: its folder does not exist") from exc
    except OSError as exc:
        raise WinAutomationError(f"cannot write local path {local}: {exc.strerror or exc}") from exc


def get_file(
    conn: SshConnection, remote: str, local: Path, *, remote_os: str, progress: Progress | None = None
) -> TransferResult:
    """Download `remote` to `local`, verified; `local` appears only once whole."""
    partial, out = _open_partial(local)
    hashed: dict[str, str | BaseException] = {}

    def hash_remote() -> None:
        try:
            hashed["sha256"] = remote_sha256(conn, remote, remote_os)
        except BaseException as exc:
            hashed["error"] = exc

    try:
        with Timer() as timer:
            hasher = threading.Thread(target=hash_remote, name="remote-sha256", daemon=True)
            hasher.start()  # the VM hashes while the bytes travel
            with out:
                copied = sftp.download(conn, remote, out, progress)
                out.flush()
                os.fsync(out.fileno())
            expected = sftp.remote_size(conn, remote)
            if expected != copied.size or partial.stat().st_size != copied.size:
                raise WinAutomationError(
                    f"download of {remote} is incomplete: {copied.size} of {expected} bytes"
                )
            hasher.join()
            if "error" in hashed:
                raise hashed["error"]  # type: ignore[misc]
            if hashed["sha256"] != copied.sha256:
                raise WinAutomationError(
                    f"download of {remote} is corrupt: "
                    f"sha256 {hashed['sha256']} on the VM, {copied.sha256} here"
                )
            os.replace(partial, local)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return _done("get", local, remote, copied.size, copied.sha256, timer.ms)
