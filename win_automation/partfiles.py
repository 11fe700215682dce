"""Names for partial files that say who owns them, and when such a file is stale.

A transfer writes `.wa-part-<tag>` files (beside the local target, or beside the remote one), the
artifact writer `.tmp-<name>.<tag>` files (each gets its final name only once whole), and a long
PowerShell script is uploaded as `.wa-script-<tag>.ps1` (removed once it ran).
The tag is `<host>-<pid>-<random>`: the first 8 hex digits of the sha256 of this host's name, the
writing process's pid, 8 random hex digits. A process killed mid-write leaves its file behind;
the next transfer to the same target, the next uploaded script, and `artifacts prune`, remove
the stale ones:
- written from this host by a process that is no longer alive: stale at once;
- anything else carrying a tag (another host's, or a live pid that may have been reused): stale
  once older than STALE_AFTER (a day);
- a file without a tag is never touched (it is not ours).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time

STALE_AFTER = 86400.0
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TAG = re.compile(r"([0-9a-f]{8})-([0-9]+)-[0-9a-f]{8}(\.[a-z0-9]{1,4})?$", re.ASCII)


NAME_MAX = 255  # bytes in one file name (Linux; NTFS takes 255 UTF-16 units, never fewer)
_TAG_MAX = 32  # owner_tag(): 8 + 1 + a pid (at most 7 digits) + 1 + 8 = 25 characters


def fitting(name: str, extra: int) -> str:
    """`name`, cut at a character boundary when needed so that `extra` more bytes (a prefix and a
    suffix) and an owner tag keep a partial file's name within NAME_MAX bytes: the partial file of
    a target named near the limit could not be created ('File name too long')."""
    room = NAME_MAX - extra - _TAG_MAX

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogateescape"))

    if size(name) <= room:
        return name
    cut = name[:room]
    while size(cut) > room:
        cut = cut[:-1]
    return cut


def owner_tag() -> str:
    """A fresh tag for a partial file written by this process."""
    return f"{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def is_stale(name: str, mtime: float, now: float | None = None) -> bool:
    """Whether partial file `name` (last written at `mtime`) was left by a writer that is gone."""
    match = _TAG.search(name)
    if match is None:
        return False
    if (time.time() if now is None else now) - mtime > STALE_AFTER:
        return True
    host, pid = match.group(1), int(match.group(2))
    return host == HOST_TAG and pid != os.getpid() and not _alive(pid)
