"""Copy-on-write faults taken ahead of a call, in the warm CLI process's spare child.

A forked child shares its parent's memory until it writes to it; each first write to a page
then costs a fault and a 4 KiB copy. A job command through the warm CLI process writes ~1,500
such pages (reference counts, mostly). The spare child (win_automation.cli.server) takes them
before its call arrives (measured: the call's part of the child 17 ms instead of 23 ms):
madvise(MADV_POPULATE_WRITE) on each private writable mapping faults its pages in writable
without touching their contents (Linux 5.14; on older kernels it fails and the call pays its
faults as before). It costs the spare a private copy of the server's heap (~30 MiB). A mapping
larger than LARGEST (the kernel merges neighbouring anonymous mappings, so the heap can be one)
is populated only where the server has pages (mincore), so that untouched reservations cost
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

MADV_POPULATE_WRITE = 23
LARGEST = 64 << 20
"""Larger mappings may be mostly reservations: only their resident pages are populated."""
PAGE = 4096
GAP = 16
"""Resident runs this many pages apart or closer are populated as one (fewer calls)."""

_madvise: Callable[[int, int, int], int] | None
_mincore: Callable[[int, int, object], int] | None
try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _mincore = _libc.mincore
    _mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    PAGE = _libc.getpagesize()
except (ImportError, OSError, AttributeError):  # no ctypes, no C library to find: no prefault
    _madvise = _mincore = None


def _writable_private() -> Iterator[tuple[int, int]]:
    """(start, length) of this process's private writable mappings, the stack excepted."""
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split()
            perms = fields[1]
            name = fields[5] if len(fields) > 5 else b""
            if not perms.startswith(b"rw") or perms[3:4] != b"p" or name.startswith(b"[s"):
                continue  # read-only, shared, or [stack]/[stack:tid]
            start, end = (int(x, 16) for x in fields[0].split(b"-"))
            if end - start <= LARGEST:
                yield start, end - start
            else:
                yield from _resident(start, end - start)


def _resident(start: int, length: int) -> Iterator[tuple[int, int]]:
    """(start, length) of the runs of resident pages in a mapping (nothing if mincore fails)."""
    assert _mincore is not None
    pages = length // PAGE
    buffer = ctypes.create_string_buffer(pages)
    if _mincore(start, length, buffer) != 0:
        return
    vec = buffer.raw
    run = None  # [first page, last page] of the current run
    for page in range(pages):
        if vec[page] & 1:
            if run is not None and page - run[1] <= GAP:
                run[1] = page
            else:
                if run is not None:
                    yield start + run[0] * PAGE, (run[1] - run[0] + 1) * PAGE
                run = [page, page]
    if run is not None:
        yield start + run[0] * PAGE, (run[1] - run[0] + 1) * PAGE


def populate(wanted: Callable[[], bool]) -> int:
    """Fault in this process's private writable memory, a mapping at a time, until `wanted()`
    (a call has come: it goes first); the bytes faulted in (0 where it cannot: no /proc, no
    ctypes, a kernel before 5.14)."""
    if _madvise is None:
        return 0
    try:
        mappings = list(_writable_private())
    except (OSError, ValueError, IndexError):
        return 0
    done = 0
    for start, length in mappings:
        if wanted():
            break
        if _madvise(start, length, MADV_POPULATE_WRITE) == 0:  # else an older kernel
            done += length
    return done
