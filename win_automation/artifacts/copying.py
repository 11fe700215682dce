"""Copying a job's artifacts elsewhere, verified (`artifacts fetch`): from an ArtifactSource (a
local folder, or the VM over SFTP: win_automation.operations.artifacts) into an `--out` folder,
each file hashed as it streams, written to a temporary name, fsynced and renamed; the manifest
last, once every file matched and is durable. A source file that cannot be read, or whose
manifest path is too long for `out`'s file system, is a Mismatch (exit 1) and the others are
still copied; an `out` that cannot be written (a full or read-only disk) is a StorageError (exit
74). A source that goes away (ConnectError: a stall, a lost connection) or whose deadline passes
(OperationTimeout) ends the copy, its error saying which files were copied and which were not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from win_automation.artifacts.store import (
    CHUNK,
    MANIFEST,
    Manifest,
    Mismatch,
    atomic_write,
    compare,
    discard,
    fsync_dir,
    read_manifest,
    safe_relative,
    temp_name,
    unreadable,
)
from win_automation.errors import ConnectError, NotFoundError, OperationTimeout, StorageError
from win_automation.regularfiles import not_regular, open_regular


class Oversized(Exception):
    """An artifact larger than its manifest says: not copied past that size (a file that grew to
    gigabytes would otherwise fill `out` before the sizes are compared)."""

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size
        """Its size when the source knows it (else it grew while read)."""


class ArtifactSource(Protocol):
    """Where `copy_verified` reads a job's artifacts from: a local folder, or the VM over SFTP
    (win_automation.operations.artifacts)."""

    def manifest(self) -> Manifest: ...

    def copy(
        self, path: str, out: BinaryIO, progress: Callable[[int], None] | None, limit: int
    ) -> tuple[int, str]:
        """Write artifact `path` into `out`; its (size, sha256) as read. FileNotFoundError or
        NotFoundError when it is missing; Oversized, with no more than `limit` bytes written,
        when it is larger than `limit`."""
        ...

    def close(self) -> None:
        """Release what reading needed (the VM's SFTP session)."""
        ...


class LocalSource:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def manifest(self) -> Manifest:
        return read_manifest(self.folder)

    def close(self) -> None:
        pass

    def copy(
        self, path: str, out: BinaryIO, progress: Callable[[int], None] | None, limit: int
    ) -> tuple[int, str]:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        digest, size = hashlib.sha256(), 0
        with open_regular(self.folder / path) as src:  # a FIFO or device is refused, never read
            if (stated := os.fstat(src.fileno()).st_size) > limit:
                raise Oversized(stated)
            while count := src.readinto(buffer):
                if size + count > limit:
                    raise Oversized(None)  # it grew while read
                digest.update(view[:count])
                try:
                    out.write(view[:count])
                except OSError as exc:  # `out`'s (a full disk), not the source's: a StorageError
                    raise _cannot_write(Path(out.name), exc) from None
                size += count
                if progress is not None:
                    progress(count)
        return size, digest.hexdigest()


def copy_verified(
    source: ArtifactSource | Path, out: Path, progress: Callable[[int], None] | None = None
) -> tuple[Manifest, list[Mismatch]]:
    """Copy every listed artifact of `source` into `out`, hashing as it streams. A file that does
    not match is not left in `out`; the manifest is written last, only when all files matched and
    are durable. A source file that cannot be read is a Mismatch; an `out` that cannot be written
    (read-only, full: also when only its fsync finds out), StorageError naming the file. An error
    that ends the copy (that one, a lost source, the deadline) says what was copied and what not."""
    source = LocalSource(source) if isinstance(source, Path) else source
    manifest = source.manifest()
    _writable(out)
    _replaceable(out / MANIFEST)  # before anything is copied
    # An earlier fetch's manifest goes first: this one may replace some of its files and then
    # fail, and a folder whose manifest no longer matches it would pass for whole.
    discard(out / MANIFEST)
    mismatches: list[Mismatch] = []
    folders = {out}
    name_max, path_max = _limits(out)
    copied = 0
    number = 0
    try:
        for number, entry in enumerate(manifest.artifacts):
            target = out / safe_relative(entry.path)
            temp = target.with_name(temp_name(target.name))
            if too_long := _too_long(entry.path, number + 1, (target, temp), name_max, path_max):
                mismatches.append(too_long)  # the entry's, not out's: the other files are copied
                continue
            _writable(target.parent)
            if not _inside(target.parent, out):  # a link already in OUT (OUT/JOB/dd -> /elsewhere)
                raise StorageError(f"cannot write {target}: a symbolic link in its path leads out of {out}")
            folders.add(target.parent)
            _replaceable(target)
            try:
                size, sha = _copy_one(source, entry.path, temp, target, progress, entry.size_bytes)
            except (OSError, NotFoundError) as exc:  # the source's: a missing or unreadable file
                discard(temp)
                why = unreadable(exc) if isinstance(exc, OSError) else "missing"
                mismatches.append(Mismatch(entry.path, why))
                continue
            except Oversized as exc:
                discard(temp)
                found = f"size {exc.size}" if exc.size is not None else "grew while copied"
                mismatches.append(
                    Mismatch(entry.path, f"{found}, manifest says {entry.size_bytes}; not copied")
                )
                continue
            except BaseException:
                discard(temp)
                raise
            problem = compare(entry, size, sha)
            if problem:
                discard(temp)
                mismatches.append(problem)
                continue
            try:
                os.replace(temp, target)
            except OSError as exc:
                discard(temp)
                raise _cannot_write(target, exc) from None
            copied += 1
    except (ConnectError, OperationTimeout, StorageError) as exc:
        # The source went away, its time is up, or `out` cannot be written (a full disk): the
        # error says what was fetched and what was not.
        _say_ended(exc, manifest, number, copied, mismatches, out)
        raise
    if not mismatches:
        try:
            for folder in sorted(folders):  # the files' renames, before the manifest names them
                fsync_dir(folder)
            atomic_write(out / MANIFEST, manifest.model_dump_json(indent=2).encode() + b"\n")
        except OSError as exc:
            raise _cannot_write(out / MANIFEST, exc) from None
    return manifest, mismatches


def _copy_one(
    source: ArtifactSource,
    path: str,
    temp: Path,
    target: Path,
    progress: Callable[[int], None] | None,
    limit: int,
) -> tuple[int, str]:
    """Artifact `path` copied into `temp`, fsynced: its (size, sha256) as read. What cannot be
    written is a StorageError naming `target`; the source's own errors pass through."""
    try:
        dst = temp.open("xb")
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        try:
            size, sha = source.copy(path, dst, progress, limit)
        except StorageError as exc:  # its write into `temp`: said of `target`
            raise StorageError(str(exc).replace(str(temp), str(target))) from None
        except OSError as exc:
            if exc.filename is not None and Path(exc.filename) == temp:
                raise _cannot_write(target, exc) from None
            raise
        try:
            dst.flush()
            os.fsync(dst.fileno())
        except OSError as exc:
            raise _cannot_write(target, exc) from None
    finally:
        with contextlib.suppress(OSError):  # what a failed flush left: dropped with the file
            dst.close()
    return size, sha


def _say_ended(
    exc: ConnectError | OperationTimeout | StorageError,
    manifest: Manifest,
    index: int,
    copied: int,
    mismatches: list[Mismatch],
    out: Path,
) -> None:
    """Add to the error that ended the copy at entry `index` what it copied and what it did not."""
    rest = [entry.path for entry in manifest.artifacts[index:]]
    said = f"{copied} of {len(manifest.artifacts)} file(s) fetched and verified into {out}"
    if mismatches:
        said += f"; {len(mismatches)} did not match: {_some([str(m) for m in mismatches])}"
    exc.message = f"{exc.message}; {said}; not fetched: {_some(rest)}; no manifest written"
    exc.args = (exc.message,)


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(_short(name) for name in names[:shown]) + more


def _short(text: str, room: int = 120) -> str:
    """`text`, its middle cut out when longer than `room` (a path of 4 KiB in a one-line error)."""
    return text if len(text) <= room else f"{text[: room // 2]}...{text[-(room // 2) :]}"


def _limits(out: Path) -> tuple[int, int]:
    """The longest file name and path (in bytes, the path's ending NUL included) that the file
    system of `out` takes; POSIX's usual 255 and 4096 when it does not say."""
    limits = []
    for name, usual in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            value = os.pathconf(out, name)
        except (OSError, ValueError):
            value = usual
        limits.append(value if value > 0 else 1 << 30)  # -1: no limit
    return limits[0], limits[1]


def _too_long(
    path: str, number: int, local: tuple[Path, Path], name_max: int, path_max: int
) -> Mismatch | None:
    """Why manifest entry `number` (`path`) cannot be written at `local` (the file and its
    temporary name), when a name in it or the whole is too long for the file system there (a
    Windows name of 255 characters can be 765 bytes here): open, mkdir and rename would fail."""
    for part in path.split("/"):
        if (size := len(os.fsencode(part))) > name_max:
            return Mismatch(
                _short(path),
                f"manifest entry {number}: the name {_short(part, 60)!r} is {size} bytes, longer than"
                f" the {name_max} a file name may be on the file system of --out; not copied",
            )
    target, temp = (len(os.fsencode(p)) for p in local)
    if max(target, temp) >= path_max:
        under = f"{target}" if target >= path_max else f"{target} (its temporary name's {temp})"
        return Mismatch(
            _short(path),
            f"manifest entry {number}: its path is {len(os.fsencode(path))} bytes, under --out"
            f" {under}, longer than the {path_max - 1} a path may be there; not copied",
        )
    return None


def _inside(folder: Path, root: Path) -> bool:
    """True when `folder`, its links followed, is `root` or under it (root's own links followed)."""
    real, top = os.path.realpath(folder), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _replaceable(target: Path) -> None:
    """StorageError when `target` is a FIFO, a device or a link to one: the rename would replace it."""
    if (what := not_regular(target)) is not None:
        raise StorageError(f"cannot write {target}: it is {what}, not a regular file")


def _cannot_write(target: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot write {target}: {exc.strerror or exc}")


def _writable(folder: Path) -> None:
    """Create `folder` (and its parents); StorageError saying why when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"cannot write into {folder}: it exists and is not a folder") from None
    except OSError as exc:
        raise StorageError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write into {folder}: permission denied")
