"""Reading what an SSH channel has buffered, in bounded slices.

A command that writes faster than it is read (`yes`, a flood of log lines) never lets the
channel's buffer run empty: a loop that reads `while channel.recv_ready()` never gets back to its
deadline or cancel check. Through the warm helper a `--timeout 2s` of `yes` ran 12 s, and a job
whose reader went away (`| head -c1`) ran on for minutes before its cancel was seen. A read pass
here takes at most SLICE bytes of each stream and says whether it left them empty; the caller
looks at its deadline and cancel between passes. Imports no paramiko (a channel's methods come
in as callables)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

READ_SIZE = 1024 * 1024
SLICE = 4 * READ_SIZE
"""Bytes of one stream read in one pass (a few ms of work at most between two checks)."""

Stream = tuple[Callable[[], bool], Callable[[int], bytes], Callable[[bytes], None]]
"""(ready, recv, sink): e.g. (channel.recv_ready, channel.recv, on_stdout)."""


def read_slice(streams: Iterable[Stream]) -> bool:
    """Pass what each stream has buffered to its sink, at most SLICE bytes each; True when
    nothing was left buffered."""
    emptied = True
    for ready, recv, sink in streams:
        taken = 0
        while ready():
            if taken >= SLICE:
                emptied = False
                break
            data = recv(READ_SIZE)
            if not data:
                break
            taken += len(data)
            sink(data)
    return emptied
