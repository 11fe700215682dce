"""File transfers to and from the VM, verified, and never leaving a partial file under its final name.

`put_file` uploads to `<remote>.wa-part-<id>`, checks the remote size and sha256 (computed on the
VM: `Get-FileHash` on Windows, `sha256sum` on posix) against the local file, then renames it over
`<remote>`. `get_file` downloads to `.<name>.wa-part-<id>` beside the local target (the pipelined
download of win_automation.adapters.sftp_download), checks the size and the sha256 against the VM's, then
renames it. A failure removes the partial file and raises a one-line error.

With a warm-connection helper (`ssh.persist`, win_automation.adapters.persist) `get_file` runs the
same download in the helper: this process opens the part file (the same checks and errors) and
hands its descriptor to the helper, which writes the file, hashes it off the read path and has
the VM hash it meanwhile; this process then checks sizes and hashes, fsyncs and renames exactly
as for a direct download. A helper that dies or stops answering fails the download with exit 3
and no file under the final name. paramiko is imported only for a direct transfer.

Partial names carry an owner tag (win_automation.partfiles: host, pid, random). A process killed
mid-transfer cannot remove its partial file; the next transfer to the same target removes the
stale ones (their writer is dead, or they are older than a day), on the VM for `put`, beside the
local file for `get`. Every SFTP read and write has the adapter's stall bound and the whole
transfer its deadline (win_automation.adapters.sftp).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydantic import BaseModel

from win_automation.adapters.execution import Executor
from win_automation.adapters.persist import WarmConnection
from win_automation.errors import (
    CommandFailed,
    NotFoundError,
    OperationTimeout,
    StorageError,
    StorageFull,
    UsageError,
    WinAutomationError,
)
from win_automation.log import Timer
from win_automation.operations import powershell
from win_automation.partfiles import fitting, is_stale, owner_tag
from win_automation.regularfiles import NotRegularFile, not_regular, open_regular

if TYPE_CHECKING:
    from win_automation.adapters.ssh import SshConnection

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
HASH_TIMEOUT = 600  # seconds for the VM to hash a file


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
    from win_automation.adapters import sftp

    folder, name = _remote_split(remote)
    removed = []
    for entry, mtime in sftp.list_folder(conn, folder):
        if entry.startswith(f"{fitting(name, len(PART))}{PART}") and is_stale(entry, mtime):
            path = entry if folder == "." else f"{folder.rstrip('/')}/{entry}"
            sftp.remove(conn, path)
            removed.append(path)
    if removed:
        log.info("stale partial uploads removed", extra={"op": "ssh.put", "files": len(removed)})
    return removed


def _local_stem(local: Path) -> str:
    """The part of the target's name its part files carry (all of it unless near NAME_MAX)."""
    return fitting(local.name, 1 + len(PART))


def remove_stale_local_parts(local: Path) -> list[Path]:
    """Delete the stale partial downloads of `local` beside it; the paths removed."""
    removed: list[Path] = []
    try:
        candidates = list(local.parent.glob(f".{_local_stem(local)}{PART}*"))
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


def sha256_command(remote: str, remote_os: str) -> str:
    """The command that prints a remote file's sha256 on the VM."""
    if remote_os == "posix":  # OpenSSL's sha256 (SHA-NI where the CPU has it), else coreutils'
        # The path once (a long one must not make the command too long for the sshd); a device or
        # FIFO is refused first: hashing /dev/zero would run until the hash timeout.
        return (
            f"p={_posix_quote(remote)}; test -f \"$p\" || {{ echo 'not a regular file' >&2; exit 1; }};"
            ' openssl dgst -sha256 -r -- "$p" 2>/dev/null || sha256sum -- "$p"'
        )
    path = powershell.quote_literal(windows_path(remote))
    script = powershell.wrap_script(f"(Get-FileHash -Algorithm SHA256 -LiteralPath {path}).Hash")
    return powershell.encoded_command_line(script)


def parse_sha256(remote: str, exit_status: int | None, stdout: bytes, stderr: bytes) -> str:
    """The digest `sha256_command` printed (lower-case hex); CommandFailed when it failed."""
    text = powershell.decode_output(stdout).strip()
    # sha256sum and `openssl dgst -r` start the line with `\\` when they escaped the file's name
    # (one holding a newline or a backslash): the digest follows it
    digest = text.split()[0].lower().removeprefix("\\") if text else ""
    if exit_status != 0 or len(digest) != 64:
        message = powershell.strip_clixml(powershell.decode_output(stderr)).strip()
        raise CommandFailed(f"cannot hash remote file {remote} on the VM: {message or text}")
    return digest


def remote_sha256(
    conn: Executor,
    remote: str,
    remote_os: str,
    *,
    cancelled: Callable[[], bool] | None = None,
    timeout: float = HASH_TIMEOUT,
) -> str:
    """The sha256 (lower-case hex) of a remote file, computed on the VM within `timeout` s
    (OperationTimeout past it); `cancelled()` turning true closes its channel (on Windows the
    hash ends with it)."""
    outcome = conn.exec(sha256_command(remote, remote_os), timeout=timeout, cancelled=cancelled)
    if outcome.timed_out:
        raise OperationTimeout(f"the VM did not hash {remote} within {timeout:.0f}s (paused or overloaded?)")
    return parse_sha256(remote, outcome.exit_status, outcome.stdout, outcome.stderr)


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


def check_remote(remote: str) -> None:
    """SFTP paths are UTF-8: a REMOTE argument holding bytes that are not (a surrogate escape
    from argv) is refused in one line, before anything is sent."""
    try:
        remote.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"REMOTE {remote}: not valid UTF-8, which SFTP paths must be") from None


def put_file(
    conn: SshConnection, local: Path, remote: str, *, remote_os: str, progress: Progress | None = None
) -> TransferResult:
    """Upload `local` to `remote`, verified; the remote file appears only once whole, within the
    transfer's deadline (ssh.command_timeout plus 1 s per MiB), the VM's hash of it included."""
    from win_automation.adapters import sftp
    from win_automation.adapters.ssh import transfer_seconds

    check_remote(remote)
    try:
        source = open_regular(local)  # a FIFO or device is refused before it can block or read forever
    except FileNotFoundError as exc:
        raise NotFoundError(f"local file {local} does not exist") from exc
    except NotRegularFile as exc:
        raise WinAutomationError(f"local path {local} is not a regular file ({exc.kind})") from None
    except OSError as exc:
        raise WinAutomationError(f"cannot read local file {local}: {exc.strerror or exc}") from exc
    name = _remote_split(remote)[1]
    stem = fitting(name, len(PART))
    partial = f"{remote[: len(remote) - len(name)]}{stem}{PART}{owner_tag()}"
    with Timer() as timer, source:
        size = os.fstat(source.fileno()).st_size
        # a VM paused while it hashed held the put for HASH_TIMEOUT (600 s), whatever the deadline
        deadline = time.monotonic() + transfer_seconds(conn.cfg, size)
        remove_stale_remote_parts(conn, remote)
        reader = _HashingReader(source)
        try:
            try:
                sftp.upload(conn, reader, partial, size, progress)  # type: ignore[arg-type]
            except WinAutomationError as exc:  # said of the part file: said of the target
                raise type(exc)(str(exc).replace(partial, remote)) from exc
            landed = sftp.remote_size(conn, partial)
            if landed != reader.size:
                raise WinAutomationError(
                    f"upload of {local} to {remote} is incomplete: {landed} of {reader.size} bytes"
                    " arrived (is the VM's disk full?)"
                )
            digest = reader.digest.hexdigest()
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimeout(f"upload to {remote} passed its deadline before the VM hashed it")
            theirs = remote_sha256(conn, partial, remote_os, timeout=left)
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


def _check_target(local: Path) -> None:
    """Only a regular file (or nothing yet) may be replaced by a download: the rename of the part
    file would put a regular file in place of a device node or FIFO (as root, /dev/null itself)."""
    what = not_regular(local)  # None: a regular file, or nothing yet (the open says what is wrong)
    if what == "a directory":
        raise WinAutomationError(f"local path {local} is a directory; name the file to write")
    if what is not None:
        raise WinAutomationError(f"local path {local} is not a regular file ({what})")


def _open_partial(local: Path) -> tuple[Path, BinaryIO]:
    _check_target(local)
    remove_stale_local_parts(local)
    partial = local.with_name(f".{_local_stem(local)}{PART}{owner_tag()}")
    try:
        return partial, partial.open("xb")
    except FileNotFoundError as exc:
        raise WinAutomationError(f"cannot write local path {local}: its folder does not exist") from exc
    except OSError as exc:
        if exc.errno in _DISK_AT_FAULT:
            raise _unwritable(local, exc) from None
        raise WinAutomationError(f"cannot write local path {local}: {exc.strerror or exc}") from exc


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
_DISK_AT_FAULT = _FULL | {errno.EROFS}
"""The disk's fault, not the path's (a missing folder, a permission): exit 74, not 1."""


def _unwritable(local: Path, exc: OSError) -> StorageError:
    """The download's target cannot be written: StorageFull (exit 74) for a full disk, a quota or
    an I/O error, as when a write fails mid-download; StorageError (exit 74) else."""
    error = StorageFull if exc.errno in _FULL else StorageError
    return error(f"cannot write local path {local}: {exc.strerror or exc}")


@dataclass(frozen=True)
class _Fetched:
    """A download written to the part file: its size and sha256, the remote size, and the VM's
    sha256 (`vm_sha256()` waits for it; raises how computing it failed)."""

    size: int
    sha256: str
    remote_size: int | None
    vm_sha256: Callable[[], str]


def _fetch_direct(
    conn: SshConnection,
    remote: str,
    out: BinaryIO,
    local: Path,
    remote_os: str,
    progress: Progress | None,
    abandoned: threading.Event,
) -> _Fetched:
    """The download here, the VM hashing meanwhile; `abandoned` set (the get failed) ends the
    hash's channel: left running, it held the VM's disk and CPU and a session slot for as long
    as the file takes to hash."""
    from win_automation.adapters import sftp, sftp_download

    hashed: dict[str, str | BaseException] = {}

    def hash_remote() -> None:
        try:
            hashed["sha256"] = remote_sha256(conn, remote, remote_os, cancelled=abandoned.is_set)
        except BaseException as exc:
            hashed["error"] = exc

    hasher = threading.Thread(target=hash_remote, name="remote-sha256", daemon=True)
    hasher.start()  # the VM hashes while the bytes travel
    copied = sftp_download.download(conn, remote, out, progress, target=f"local path {local}")

    def vm_sha256() -> str:
        hasher.join()
        if "error" in hashed:
            raise hashed["error"]  # type: ignore[misc]
        return str(hashed["sha256"])

    return _Fetched(copied.size, copied.sha256, sftp.remote_size(conn, remote), vm_sha256)


def _fetch_warm(
    conn: WarmConnection, remote: str, out: BinaryIO, local: Path, remote_os: str, progress: Progress | None
) -> _Fetched:
    from win_automation.adapters.persist_wire import error_from

    answer = conn.download(
        remote,
        out.fileno(),
        target=f"local path {local}",
        hash_command=sha256_command(remote, remote_os),
        hash_timeout=HASH_TIMEOUT,
        progress=progress,
    )

    def vm_sha256() -> str:
        if "error" in answer:
            raise error_from(answer["error"])
        outcome = answer["outcome"]
        return parse_sha256(
            remote,
            outcome["exit_status"],
            base64.b64decode(outcome["stdout"]),
            base64.b64decode(outcome["stderr"]),
        )

    size = answer.get("remote_size")
    remote_size = None if size is None else int(size)
    return _Fetched(int(answer["size"]), str(answer["sha256"]), remote_size, vm_sha256)


def get_file(
    conn: Executor, remote: str, local: Path, *, remote_os: str, progress: Progress | None = None
) -> TransferResult:
    """Download `remote` to `local`, verified; `local` appears only once whole. `conn` is this
    process's SshConnection, or a WarmConnection (the download then runs in the helper)."""
    check_remote(remote)
    partial, out = _open_partial(local)
    abandoned = threading.Event()
    try:
        with Timer() as timer:
            with out:
                if isinstance(conn, WarmConnection):
                    copied = _fetch_warm(conn, remote, out, local, remote_os, progress)
                else:
                    copied = _fetch_direct(conn, remote, out, local, remote_os, progress, abandoned)  # type: ignore[arg-type]
                try:  # the written data reaches the disk: a full one may say so only now
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise _unwritable(local, exc) from None
            if copied.remote_size != copied.size or partial.stat().st_size != copied.size:
                raise WinAutomationError(
                    f"download of {remote} is incomplete: {copied.size} of {copied.remote_size} bytes"
                )
            theirs = copied.vm_sha256()
            if theirs != copied.sha256:
                raise WinAutomationError(
                    f"download of {remote} is corrupt: sha256 {theirs} on the VM, {copied.sha256} here"
                )
            _check_target(local)  # again: a node may have been put there during the download
            try:
                os.replace(partial, local)
            except OSError as exc:
                raise _unwritable(local, exc) from None
    except BaseException:
        abandoned.set()
        with contextlib.suppress(OSError):  # a disk gone read-only keeps it: its error is the one said
            partial.unlink(missing_ok=True)
        raise
    return _done("get", local, remote, copied.size, copied.sha256, timer.ms)
