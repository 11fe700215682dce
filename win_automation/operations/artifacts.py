"""A job's artifact folder on the VM (`<artifacts.remote_dir>\\<job_id>\\`), read over SFTP.

`VmSource` is the ArtifactSource that `artifacts.copying.copy_verified` uses for `artifacts fetch --from vm`:
it reads the folder's `manifest.json`, then downloads each listed file with the SSH layer's
pipelined SFTP download (over the process-wide pooled connection), which hashes as it writes, so
every size and sha256 is checked against the manifest without reading the file twice.
"""

from __future__ import annotations

import errno
import hashlib
import re
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from pydantic import ValidationError

from win_automation.adapters import sftp_download
from win_automation.adapters.sftp_fetch import SMALL, WINDOW, FetchSession
from win_automation.adapters.ssh import SshConnection, get_connection
from win_automation.artifacts.copying import ArtifactSource, LocalSource, Oversized
from win_automation.artifacts.folders import job_artifacts
from win_automation.artifacts.store import MANIFEST, MAX_MANIFEST_BYTES, Manifest, safe_relative
from win_automation.config import Config
from win_automation.errors import ArtifactMismatch, StorageError, StorageFull, UsageError
from win_automation.jobs.ids import validate_job_id
from win_automation.regularfiles import NotRegularFile

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def sftp_path(remote_dir: str, *parts: str) -> str:
    """An SFTP path under `remote_dir`: `C:\\ProgramData\\x` + `a/b` -> `/C:/ProgramData/x/a/b`
    (Windows OpenSSH's form); a POSIX root stays as it is."""
    root = remote_dir.replace("\\", "/").rstrip("/")
    if re.match(r"^[A-Za-z]:", root):
        root = "/" + root
    return "/".join([root, *parts])


class VmSource:
    """The artifacts of job `job_id` in `remote_dir` on the VM behind `conn`, on one SFTP session
    (`close()` ends it). Files are best copied in the manifest's order: the small ones ahead are
    then already on their way (sftp_fetch); any other order works, one file at a time."""

    def __init__(self, conn: SshConnection, remote_dir: str, job_id: str) -> None:
        self.conn = conn
        self.job_id = validate_job_id(job_id)
        self.remote_dir = remote_dir
        self.session = FetchSession(conn, f"SFTP fetch of {sftp_path(remote_dir, self.job_id)}")
        self._manifest: Manifest | None = None
        self._next = 0  # the entry after the one copied last
        self._admitted = 0  # entries up to here were looked at for admission

    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self._read_manifest()
            # one deadline for the whole fetch, from its start: ssh.command_timeout + 1 s per MiB
            self.session.arm(sum(a.size_bytes for a in self._manifest.artifacts))
        return self._manifest

    def _read_manifest(self) -> Manifest:
        path = sftp_path(self.remote_dir, self.job_id, MANIFEST)
        where = f"a temporary file in {tempfile.gettempdir()} (the manifest from the VM)"
        try:
            with tempfile.TemporaryFile() as buffer:
                # NotFoundError names the path; one over the bound is never written whole here
                self.session.download(path, buffer, None, target=where, limit=MAX_MANIFEST_BYTES)
                buffer.seek(0)
                raw = buffer.read()
        except sftp_download.TooLarge as exc:
            raise ArtifactMismatch(f"{path} on the VM: not a manifest ({exc})") from None
        except OSError as exc:  # no temporary folder that can be written (TMPDIR)
            raise StorageError(f"cannot use {where}: {exc.strerror or exc}") from None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise ArtifactMismatch(
                f"{path} on the VM: not a valid manifest ({exc.errors()[0]['msg']})"
            ) from None
        if manifest.job_id != self.job_id:
            raise ArtifactMismatch(f"{path} on the VM belongs to job {manifest.job_id}, not {self.job_id}")
        return manifest

    def close(self) -> None:
        self.session.close()

    def copy(
        self, path: str, out: BinaryIO, progress: Callable[[int], None] | None, limit: int
    ) -> tuple[int, str]:
        remote = self._remote(path)
        try:
            index = self._position(path, limit)
            if index is None:
                return self._download(remote, out, progress, limit)
            data = self.session.take(index)
        except sftp_download.TooLarge as exc:
            raise Oversized(exc.size) from None
        except sftp_download.RemoteUnreadable as exc:  # this file's mismatch, as a local one's
            if exc.mode is not None and stat.S_ISDIR(exc.mode):
                raise IsADirectoryError(errno.EISDIR, exc.reason, remote) from None
            if exc.mode is not None:
                raise NotRegularFile(remote, exc.mode) from None
            raise OSError(errno.EIO, exc.reason, remote) from None
        try:
            out.write(data)
        except OSError as exc:  # `out`'s (a full disk), not the source's
            error = StorageFull if exc.errno in _FULL else StorageError
            raise error(f"cannot write {out.name}: {exc.strerror or exc}") from None
        if progress is not None:
            progress(len(data))
        return len(data), hashlib.sha256(data).hexdigest()

    def _remote(self, path: str) -> str:
        return sftp_path(self.remote_dir, self.job_id, safe_relative(path))

    def _download(
        self, remote: str, out: BinaryIO, progress: Callable[[int], None] | None, limit: int
    ) -> tuple[int, str]:
        done = 0

        def advance(hashed: int, total: int) -> None:
            nonlocal done
            if progress is not None and hashed > done:
                progress(hashed - done)
                done = hashed

        copied = self.session.download(remote, out, advance, limit=limit)
        return copied.size, copied.sha256

    def _position(self, path: str, limit: int) -> int | None:
        """The manifest index of `path` when it is small and next in order (its fetch started
        with those before it, or now), the entries skipped before it forgotten; else None."""
        entries = self.manifest().artifacts
        index = self._next
        while index < len(entries) and entries[index].path != path:
            index += 1
        if index >= len(entries) or entries[index].path != path or entries[index].size_bytes != limit:
            return None
        for skipped in range(self._next, index):
            self.session.forget(skipped)
        self._next = index + 1
        if limit > SMALL:
            return None
        # the small files ahead start now, at most WINDOW of them admitted and not yet taken
        if not self.session.files:  # none in flight (or the session was closed): from here
            self._admitted = index
        while self._admitted < len(entries) and len(self.session.files) < WINDOW:
            entry = entries[self._admitted]
            if entry.size_bytes <= SMALL:
                self.session.admit(self._admitted, self._remote(entry.path), entry.size_bytes)
            self._admitted += 1
        return index if index in self.session.files else None


def artifact_source(config: Config, job_id: str, source: str) -> tuple[ArtifactSource, str]:
    """Where to copy job `job_id`'s artifacts from, and how to name it: `local` (its folder under
    artifacts.out_dir), `vm` (artifacts.remote_dir over SFTP), or `auto` (local when it has a
    manifest, else the VM)."""
    if source not in ("auto", "local", "vm"):
        raise UsageError(f"--from: {source!r} must be auto, local or vm")
    folder = job_artifacts(config, job_id)  # as the journal recorded it: found from any directory
    if source == "local" or (source == "auto" and (folder / MANIFEST).exists()):
        return LocalSource(folder), str(folder)
    remote = VmSource(get_connection(config.ssh), config.artifacts.remote_dir, job_id)
    return remote, f"{config.ssh.host}:{sftp_path(config.artifacts.remote_dir, job_id)}"
