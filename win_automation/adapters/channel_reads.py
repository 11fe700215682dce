"""Reading what an SSH channel has buffered, in bounded slices.

A command that writes faster than it is read (`yes`, a flood of log lines) never lets the
channel's buffer run empty: a loop that reads `while channel.recv_ready()` never gets back to its
deadline or cancel check. Through the warm helper a `--timeout 2s` of `yes` ran 12 s, and a job
whose reader went away (`| head -c1`) ran on for minutes before its cancel was seen. A read pass
here takes at most SLICE bytes of each stream and says whether it left them empty; the caller
looks at its deadline and cancel between passes. Imports no paramiko (a channel's methods come
in as callables)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

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


def close_channel(channel: Any) -> None:
    """Close a paramiko channel whose fileno() was taken. paramiko's close closes that pipe's two
    fds while its transport thread may still be feeding the channel (a flood of output, a command
    just stopped): the feed's write to the pipe then hits a closed fd, EBADF, which ends the whole
    transport ("Socket exception: Bad file descriptor"; 1 in ~10 capped `yes` floods under load),
    or a number another file has reused meanwhile. So the buffers' events are first swapped, under
    the buffers' own locks (which every feed holds), for plain Events: no feed touches the pipe
    after that."""
    for buffer in (channel.in_buffer, channel.in_stderr_buffer):
        buffer.set_event(threading.Event())
    channel.close()
