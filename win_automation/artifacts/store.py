"""Artifact folders: `<artifacts.out_dir>/<job_id>/` holding a job's evidence and `manifest.json`.

Manifest: `{"job_id", "trace_id", "created_at" (RFC3339), "artifacts": [{"type", "path" (relative
to the job folder), "size_bytes", "sha256"}]}`. An artifact's type is a short kebab-case word that
its workflow declares (`Workflow.artifact_types`, e.g. `ssh` for stdout.txt/stderr.txt/exit_code.txt):
a writer accepts only the types it was given.

Writing (`ArtifactWriter`, given to steps as `ctx.artifacts`): each artifact is written to a
temporary name in the job folder, hashed while it is written, fsynced, renamed into place, and
then the manifest is rewritten the same way (temp, fsync, rename, fsync of the folder). A crash at
any point leaves a manifest that names only complete files with their true size and hash (at
worst a stray `.tmp-*` file, which `verify` ignores and retention removes).

Reading: `verify_folder` re-hashes every listed file; `copy_verified` (win_automation.artifacts.
copying) copies a job's artifacts elsewhere, checking each file as it streams.
Hashing is win_automation.artifacts.hashing; retention (`prune`) win_automation.artifacts.retention.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from win_automation.artifacts.hashing import hash_files
from win_automation.durations import rfc3339
from win_automation.errors import (
    ArtifactMismatch,
    NoArtifacts,
    NotFoundError,
    StorageError,
    StorageFull,
    UsageError,
)
from win_automation.jobs.ids import validate_job_id
from win_automation.partfiles import fitting, owner_tag
from win_automation.regularfiles import NotRegularFile, open_regular

ArtifactType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=40)]
MANIFEST = "manifest.json"
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is read whole: one larger is refused (about 80 000 files' entries)."""
TEMP_PREFIX = ".tmp-"


def is_safe_relative(name: str) -> bool:
    """A plain relative path inside a job folder: no `..`, no backslash, not the manifest, valid
    UTF-8 (the manifest is JSON). String checks only (called for every artifact written and every
    manifest entry read)."""
    parts = name.split("/")
    return not (
        not name
        or (not name.isascii() and any("\ud800" <= c <= "\udfff" for c in name))  # not UTF-8
        or "\\" in name
        or "\x00" in name
        or any(part in ("..", ".", "") for part in parts)  # also an absolute path ("" first)
        or parts[-1].startswith(TEMP_PREFIX)
        or name == MANIFEST
    )


def safe_relative(name: str) -> str:
    """`name` when it is a safe artifact path; else UsageError."""
    if not is_safe_relative(name):
        raise UsageError(f"artifact path {name!r} must be a plain relative path inside the job folder")
    return name


def temp_name(name: str) -> str:
    """`.tmp-<name>.<owner tag>` (name cut near NAME_MAX): a file being written, and its writer."""
    return f"{TEMP_PREFIX}{fitting(name, len(TEMP_PREFIX) + 1)}.{owner_tag()}"


def _manifest_path(name: str) -> str:
    if not is_safe_relative(name):
        raise ValueError(f"{name!r} is not a plain relative path inside the job folder")
    return name


class ArtifactEntry(BaseModel):
    """One file of the manifest; a manifest naming `../x` or a bad hash does not validate."""

    type: ArtifactType
    path: Annotated[str, AfterValidator(_manifest_path)]
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Manifest(BaseModel):
    job_id: str
    trace_id: str
    created_at: str
    artifacts: list[ArtifactEntry] = []

    def created_timestamp(self) -> float:
        return datetime.fromisoformat(self.created_at.replace("Z", "+00:00")).timestamp()


def job_folder(root: Path, job_id: str) -> Path:
    """The job's folder under `root`; the id is validated first (no traversal, ever)."""
    return root / validate_job_id(job_id)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(temp_name(path.name))
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        discard(temp)
        raise
    fsync_dir(path.parent)


def discard(temp: Path) -> None:
    """Remove a temporary file after a failure; on a file system that went read-only meanwhile it
    stays (the failure that brought us here is the one to report; retention removes it later)."""
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest; NoArtifacts (exit 66) when the folder or its manifest is absent."""
    path = folder / MANIFEST
    try:
        # a FIFO or device in its place (a symlink to /dev/zero) is never read: it would block,
        # or fill memory until the kernel kills the process; a huge file is not read whole
        with open_regular(path) as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ArtifactMismatch(f"{path} is over {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest")
        return Manifest.model_validate_json(data)
    except (FileNotFoundError, NotADirectoryError):
        if not folder.is_dir():
            raise NoArtifacts(f"no artifacts for job {folder.name}: {folder} does not exist") from None
        raise NoArtifacts(f"no artifacts for job {folder.name}: {folder} has no {MANIFEST}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ArtifactMismatch(f"{path}: not a valid manifest ({exc.errors()[0]['msg']})") from None


class _HashingWriter:
    """A binary file handle that hashes and counts what goes through it."""

    def __init__(self, handle: IO[bytes], target: Path | None = None) -> None:
        self._handle = handle
        self._target = Path(handle.name) if target is None else target  # named in its errors
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise _unwritable(exc, self._target) from None


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def _unwritable(exc: OSError, path: Path) -> StorageError:
    """An artifact that cannot be written, in one line naming the setting that put it there:
    StorageFull (retried: space may free) for a full disk, StorageError (exit 74 at once) else."""
    where = str(path).replace(temp_name(path.name), path.name)
    error = StorageFull if exc.errno in _FULL else StorageError
    return error(f"artifacts.out_dir: cannot write {where}: {exc.strerror or exc}")


class ArtifactWriter:
    """Writes one job's artifacts and keeps its manifest true after every file (or `batch`)."""

    def __init__(
        self,
        root: Path,
        job_id: str,
        trace_id: str,
        created_at: float | None = None,
        *,
        types: tuple[str, ...],
    ) -> None:
        self.folder = job_folder(root, job_id)
        self.types = types
        self.job_id = job_id
        self.trace_id = trace_id
        self._created_at = time.time() if created_at is None else created_at
        self._lock = threading.Lock()
        self._entries: dict[str, ArtifactEntry] = {}  # what this writer wrote, by path
        self._pending: list[ArtifactEntry] | None = None  # inside batch(): not in the manifest yet

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The files written inside enter the manifest together as the block ends (also when it
        raises): one manifest write and one folder sync for all, not one each. The manifest stays
        true, listing no file before it is durable; it lists a batch's files only at its end."""
        with self._lock:
            outer = self._pending is None
            if outer:
                self._pending = []
        try:
            yield
        finally:
            if outer:
                with self._lock:
                    pending, self._pending = self._pending or [], None
                if pending:
                    for folder in {(self.folder / e.path).parent for e in pending}:
                        try:
                            fsync_dir(folder)  # their renames, before the manifest names them
                        except OSError as exc:
                            raise _unwritable(exc, folder) from None
                    self._record(*pending)

    @contextmanager
    def open(self, type: str, name: str) -> Iterator[_HashingWriter]:
        """Stream an artifact: `with writer.open("playwright", "trace.zip") as f: f.write(...)`."""
        if type not in self.types:
            wanted = ", ".join(self.types) or "none declared"
            raise UsageError(f"artifact type {type!r} is not one this workflow declares ({wanted})")
        name = safe_relative(name)
        target = self.folder / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(exc, target.parent) from None
        temp = target.with_name(temp_name(target.name))
        try:
            handle = temp.open("wb")
        except OSError as exc:
            raise _unwritable(exc, target) from None
        try:
            writer = _HashingWriter(handle, target)  # its errors name the artifact, not the temp
            yield writer
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(temp, target)
                if self._pending is None:  # a batch syncs the folder once, at its end
                    fsync_dir(target.parent)
            except OSError as exc:
                raise _unwritable(exc, target) from None
        except BaseException:
            # closed quietly: its buffered rest may not fit either (a full disk), and that error
            # must not stand in for the one that ended the writing
            with contextlib.suppress(OSError):
                handle.close()
            discard(temp)
            raise
        entry = ArtifactEntry(type=type, path=name, size_bytes=writer.size, sha256=writer.digest.hexdigest())
        with self._lock:
            self._entries[name] = entry
            if self._pending is not None:
                self._pending.append(entry)
                return
        self._record(entry)

    def write_bytes(self, type: str, name: str, data: bytes) -> ArtifactEntry:
        with self.open(type, name) as handle:
            handle.write(data)
        return self.entry(name)

    def write_text(self, type: str, name: str, text: str) -> ArtifactEntry:
        return self.write_bytes(type, name, text.encode("utf-8"))

    def write_file(self, type: str, name: str, source: Path) -> ArtifactEntry:
        """Copy `source` in as an artifact, hashing while copying."""
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with open_regular(source) as src, self.open(type, name) as handle:
            while count := src.readinto(buffer):
                handle.write(view[:count])
        return self.entry(name)

    def entry(self, name: str) -> ArtifactEntry:
        """The manifest entry of a file this writer wrote (inside a batch: its entry to be)."""
        return self._entries[safe_relative(name)]

    def manifest(self) -> Manifest:
        try:
            return read_manifest(self.folder)
        except NotFoundError:
            return Manifest(
                job_id=self.job_id, trace_id=self.trace_id, created_at=rfc3339(self._created_at, millis=False)
            )

    def _record(self, *entries: ArtifactEntry) -> None:
        with self._lock:
            manifest = self.manifest()
            latest = {e.path: e for e in entries}  # a file written twice in a batch: its last
            manifest.artifacts = [e for e in manifest.artifacts if e.path not in latest] + list(
                latest.values()
            )
            try:
                atomic_write(self.folder / MANIFEST, manifest.model_dump_json(indent=2).encode() + b"\n")
            except OSError as exc:
                raise _unwritable(exc, self.folder / MANIFEST) from None


@dataclass(frozen=True)
class Mismatch:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path} ({self.problem})"


def compare(entry: ArtifactEntry, size: int, sha256: str) -> Mismatch | None:
    """How a copy of `entry` with this size and hash differs from the manifest, if it does."""
    if size != entry.size_bytes:
        return Mismatch(entry.path, f"size {size}, manifest says {entry.size_bytes}")
    if sha256 != entry.sha256:
        return Mismatch(entry.path, f"sha256 {sha256[:12]}..., manifest says {entry.sha256[:12]}...")
    return None


def unreadable(exc: OSError) -> str:
    """Why an artifact could not be read, as a Mismatch says it."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(exc, NotRegularFile):
        return f"{exc.kind}, not a regular file"
    return f"unreadable: {exc.strerror or exc}"


def check_entry(entry: ArtifactEntry, hashed: tuple[int, str] | OSError) -> Mismatch | None:
    """How `entry` differs from the manifest, given what hashing its file gave."""
    if isinstance(hashed, OSError):
        return Mismatch(entry.path, unreadable(hashed))
    return compare(entry, *hashed)


def raise_mismatches(what: str, mismatches: list[Mismatch]) -> None:
    if mismatches:
        names = ", ".join(str(m) for m in mismatches)
        raise ArtifactMismatch(f"{what}: {len(mismatches)} file(s) do not match the manifest: {names}")


def verify_folder(folder: Path, progress: Callable[[int], None] | None = None) -> Manifest:
    """Re-hash every artifact of the folder; ArtifactMismatch naming each bad file."""
    manifest = read_manifest(folder)
    entries = manifest.artifacts
    order = sorted(range(len(entries)), key=lambda i: -entries[i].size_bytes)  # largest first
    hashed = hash_files([folder / safe_relative(entries[i].path) for i in order], progress)
    found = dict(zip(order, hashed, strict=True))
    mismatches = [m for i, e in enumerate(entries) if (m := check_entry(e, found[i]))]
    raise_mismatches(f"verify {folder.name}", mismatches)
    return manifest
