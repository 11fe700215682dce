"""win_automation.cli.prefault: a forked child's copy-on-write faults, taken ahead (real fork,
real page faults counted by the kernel)."""

from __future__ import annotations

import os
import resource

from win_automation.cli import prefault

PAGE = os.sysconf("SC_PAGE_SIZE")


def faults_writing_in_a_child(block: bytearray, populate: bool) -> int:
    """Minor faults a forked child takes writing one byte in each page of `block`."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            if populate:
                prefault.populate(lambda: False)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for offset in range(0, len(block), PAGE):
                block[offset] = 2
            os.write(write, str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        faults = int(answer.read())
    os.waitpid(pid, 0)
    return faults


def test_a_populated_child_writes_its_parents_memory_without_faults() -> None:
    block = bytearray(16 << 20)
    for offset in range(0, len(block), PAGE):
        block[offset] = 1  # resident in the parent, shared with the child until written
    pages = len(block) // PAGE
    assert faults_writing_in_a_child(block, populate=False) >= pages
    assert faults_writing_in_a_child(block, populate=True) < pages // 20
    assert block[0] == 1  # the child's writes were its own


def test_a_call_stops_it_at_once() -> None:
    assert prefault.populate(lambda: True) == 0
