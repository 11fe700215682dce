"""SFTP over the pooled connection: uploads, stat, rename, remove, folders; the transfer deadline.

The verified download (pipelined, hashed as it arrives) is win_automation.adapters.sftp_download.
These use paramiko's `SFTPClient` (uploads pipelined).

Deadlines: every read and write on an SFTP channel waits at most `stall_seconds(ssh)` (the longer
of ssh.connect_timeout and two keepalive intervals) for the VM: a longer stall is a ConnectError
(exit 3) and drops the connection. A whole transfer of N bytes must end within
`transfer_seconds(ssh, N)` (ssh.command_timeout plus 1 s per MiB), else OperationTimeout (124).
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

import paramiko

from win_automation.adapters.ssh import SshConnection, transfer_seconds
from win_automation.errors import (
    ConnectError,
    NotFoundError,
    OperationTimeout,
    WinAutomationError,
)

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


class Deadline:
    """The whole transfer's deadline, armed once its size is known."""

    def __init__(self, conn: SshConnection, what: str) -> None:
        self.conn = conn
        self.what = what
        self.start = time.monotonic()
        self.limit: float | None = None

    def arm(self, size: int) -> None:
        self.limit = transfer_seconds(self.conn.cfg, size)

    def check(self) -> None:
        if self.limit is not None and time.monotonic() - self.start > self.limit:
            raise OperationTimeout(
                f"{self.what} passed its deadline of {self.limit:g}s (ssh.command_timeout plus 1 s per MiB)"
            )


@contextmanager
def shared(conn: SshConnection) -> Iterator[paramiko.SFTPClient]:
    """The connection's one SFTP session, for this thread alone while the block runs. paramiko's
    SFTPClient is not thread-safe: of two threads waiting for answers, one may read and drop the
    other's (which then waits out the stall bound, and the connection is dropped), and the warm
    helper and the worker use one connection from several threads. A request cut short by
    Ctrl-C or SIGTERM can leave the session unusable for good: the connection is abandoned
    (SshConnection.abandon), and the next use connects afresh."""
    with conn.sftp_lock:
        try:
            yield conn.sftp()
        except KeyboardInterrupt:
            conn.abandon()
            raise


@contextmanager
def bounded(conn: SshConnection, what: str) -> Iterator[None]:
    """A read or write that waited longer than the stall bound: ConnectError, connection dropped."""
    try:
        yield
    except TimeoutError as exc:
        raise conn.stalled(what) from exc


def _translate(exc: BaseException, what: str) -> WinAutomationError:
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
        return NotFoundError(f"{what} does not exist")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return WinAutomationError(f"{what}: permission denied")
    if isinstance(exc, IOError) and not isinstance(exc, paramiko.SSHException | EOFError):
        return WinAutomationError(f"{what}: {exc}")
    return ConnectError(f"SFTP failed on {what}: {exc}")


UPLOAD_CHUNK = 32768  # as SFTPClient.putfo: one SFTP write request each, pipelined


def upload(
    conn: SshConnection, source: BinaryIO, remote: str, size: int, progress: Progress | None = None
) -> None:
    """Write `source` to remote path `remote` (pipelined writes), within the transfer deadline."""
    deadline = Deadline(conn, f"SFTP upload to {remote}")
    deadline.arm(size)

    def advance(done: int, total: int) -> None:
        deadline.check()
        if progress is not None:
            progress(done, total)

    try:
        with shared(conn) as sftp, bounded(conn, f"SFTP upload to {remote}"):
            target = sftp.file(remote, "wb")  # SFTPClient.putfo, but for an interrupt (below)
            try:
                target.set_pipelined(True)
                done = 0
                while chunk := source.read(UPLOAD_CHUNK):
                    target.write(chunk)
                    done += len(chunk)
                    advance(done, size)
            except TimeoutError:
                # the VM stopped answering (paused): an orderly close would wait the stall bound
                # once more for its answer; the connection goes (bounded says so)
                conn.close()
                raise
            except KeyboardInterrupt:  # the file is not closed: see shared()
                conn.abandon(target)
                raise
            except Exception:
                target.close()
                raise
            target.close()
    except OSError as exc:
        if str(exc) == "Failure":  # SSH_FX_FAILURE: what sftp-server answers a write ENOSPC gave
            raise WinAutomationError(
                f"remote path {remote}: the VM refused the write (SFTP 'Failure': is its disk full?)"
            ) from exc
        raise _translate(exc, f"remote path {remote}") from exc
    except (paramiko.SSHException, EOFError) as exc:
        raise _translate(exc, f"remote path {remote}") from exc


def remote_size(conn: SshConnection, remote: str) -> int | None:
    """Size of a remote regular file; None when it does not exist."""
    try:
        with shared(conn) as sftp, bounded(conn, f"SFTP stat of {remote}"):
            attrs = sftp.stat(remote)
    except FileNotFoundError:
        return None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _translate(exc, f"remote path {remote}") from exc
    if attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode):
        raise WinAutomationError(f"remote path {remote} is a directory")
    return int(attrs.st_size or 0)


def rename(conn: SshConnection, source: str, target: str) -> None:
    """Rename `source` to `target`, replacing it (posix-rename, else remove then rename)."""
    try:
        with shared(conn) as sftp, bounded(conn, f"SFTP rename to {target}"):
            _rename(conn, sftp, source, target)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _translate(exc, f"remote path {target}") from exc


def _rename(conn: SshConnection, sftp: paramiko.SFTPClient, source: str, target: str) -> None:
    try:
        sftp.posix_rename(source, target)
    except TimeoutError:
        raise
    except OSError:  # no posix-rename@openssh.com (Windows OpenSSH has it; others may not)
        if remote_size(conn, target) is not None:
            sftp.remove(target)
        sftp.rename(source, target)


def remove(conn: SshConnection, remote: str) -> None:
    """Remove a remote file; a missing one is fine."""
    try:
        with shared(conn) as sftp, bounded(conn, f"SFTP remove of {remote}"):
            sftp.remove(remote)
    except FileNotFoundError:
        return
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _translate(exc, f"remote path {remote}") from exc


def makedirs(conn: SshConnection, remote: str) -> bool:
    """Create the remote folder `remote` and its missing parents (`/`-separated, `C:/...` on
    Windows); True when anything was created."""
    parts = remote.replace("\\", "/").rstrip("/").split("/")
    created = False
    for end in range(1, len(parts) + 1):
        path = "/".join(parts[:end])
        if not path or path.endswith(":"):  # the root, or a Windows drive
            continue
        try:
            with shared(conn) as sftp, bounded(conn, f"SFTP stat of {path}"):
                attrs = sftp.stat(path)
        except FileNotFoundError:
            try:
                with shared(conn) as sftp, bounded(conn, f"SFTP mkdir of {path}"):
                    sftp.mkdir(path)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise _translate(exc, f"remote folder {path}") from exc
            created = True
            continue
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise _translate(exc, f"remote folder {path}") from exc
        if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
            raise WinAutomationError(f"remote path {path} is a file, not a folder")
    return created


def list_folder(conn: SshConnection, folder: str) -> list[tuple[str, float]]:
    """(name, mtime) of each entry of remote `folder`; an empty list when it does not exist, or
    when a name in it is not UTF-8 (paramiko cannot decode that listing; its callers only look
    for stale files of their own there, so they then leave the folder as it is)."""
    try:
        with shared(conn) as sftp, bounded(conn, f"SFTP listing of {folder}"):
            entries = sftp.listdir_attr(folder)
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        log.warning("a name in it is not UTF-8: not listed", extra={"op": "sftp.list", "folder": folder})
        return []
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _translate(exc, f"remote folder {folder}") from exc
    return [(e.filename, float(e.st_mtime or 0)) for e in entries]
