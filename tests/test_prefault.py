"""win_automation.cli.prefault: a forked child's copy-on-write faults, taken ahead (real fork,
real page faults counted by the kernel)."""

from __future__ import annotations

import ctypes
import mmap
import os
import resource

from win_automation.cli import prefault

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_kib(block: bytearray | mmap.mmap) -> int:
    """The resident KiB of the mapping that holds `block` (/proc/self/smaps)."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(block))
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                inside = start <= address < end
            elif inside and fields[0] == "Rss:":
                return int(fields[1])
    raise AssertionError("no mapping holds the block")


def in_a_child(block: bytearray | mmap.mmap, populate: bool, written: int | None = None) -> tuple[int, int]:
    """(minor faults, KiB the populate made resident in `block`'s mapping) of a forked child
    writing one byte in each page of `block`'s first `written` bytes (all of it by default)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            before_populate = rss_kib(block)
            if populate:
                prefault.populate(lambda: False)
            grown = rss_kib(block) - before_populate
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for offset in range(0, len(block) if written is None else written, PAGE):
                block[offset] = 2
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            os.write(write, f"{faults} {grown}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        faults, grown = (int(x) for x in answer.read().split())
    os.waitpid(pid, 0)
    return faults, grown


def faults_writing_in_a_child(block: bytearray, populate: bool) -> int:
    return in_a_child(block, populate)[0]


def test_a_populated_child_writes_its_parents_memory_without_faults() -> None:
    block = bytearray(16 << 20)
    for offset in range(0, len(block), PAGE):
        block[offset] = 1  # resident in the parent, shared with the child until written
    pages = len(block) // PAGE
    assert faults_writing_in_a_child(block, populate=False) >= pages
    assert faults_writing_in_a_child(block, populate=True) < pages // 20
    assert block[0] == 1  # the child's writes were its own


def test_a_large_mapping_is_populated_where_it_is_resident_only() -> None:
    size, used = prefault.LARGEST + (32 << 20), 16 << 20
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for offset in range(0, used, PAGE):
            block[offset] = 1
        pages = used // PAGE
        assert in_a_child(block, populate=False, written=used)[0] >= pages
        faults, grown = in_a_child(block, populate=True, written=used)
        assert faults < pages // 20
        assert grown < (size - used >> 10) // 4, grown  # not the untouched 80 MiB
    finally:
        block.close()


def test_a_call_stops_it_at_once() -> None:
    assert prefault.populate(lambda: True) == 0
