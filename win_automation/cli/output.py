"""Printing results: JSON for programs, rich tables for people (rich is imported only when used)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import sys
import time
from collections.abc import Sequence
from typing import Any

from win_automation.log import line_break


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table for people. Its cells are text, never rich markup (a path or an answer from the VM
    holding `[/x]` was a MarkupError traceback, `[bold]` vanished), with control characters
    escaped as in errors (an ESC from the VM reached the terminal raw)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(one_line(title)), title_justify="left")
    for index, column in enumerate(columns):
        # The first column is the row's key (a job id, a setting): never broken across lines.
        table.add_column(column, overflow="fold", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text("" if cell is None else shortened(one_line(str(cell)))) for cell in row))
    # Piped output has no terminal width to fit: keep rows on one line for grep and less.
    Console(soft_wrap=False, width=None if sys.stdout.isatty() else 240).print(table)


def one_line(text: str) -> str:
    """`text` with every line break, control and format character escaped (`\\n`, `\\u2028`):
    a value quoted in an error (a key, a path) can never split the error across lines."""
    out = []
    for char in text:
        if char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char.isprintable() or char == " ":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def path_text(path: object) -> str:
    """A path as text that is valid UTF-8 whatever bytes its name holds: bytes that are not UTF-8
    (a surrogate escape from argv) shown as `\\xff`. For a path recorded in a job (a name for
    people), which the journal and JSON can hold, where the path itself could not be."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# An error line or a table cell longer than this (a value of megabytes quoted in it) keeps its
# start and its end (where an error's reason is).
MAX_ERROR_CHARS = 4096


def shortened(text: str) -> str:
    """`text`, or its first and last MAX_ERROR_CHARS // 2 characters when longer."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = MAX_ERROR_CHARS // 2
    return f"{text[:half]}...({len(text) - 2 * half} characters left out)...{text[-half:]}"


STOPPED_ERROR_WAIT = 2.0
"""Seconds the error line of a command that was stopped (exit 130: Ctrl-C, SIGTERM, SIGHUP, a
cancel) waits for a reader that does not read (a paused pipe, a terminal held by Ctrl-S); then it
is dropped and the command exits: a stop never waits for the reader to come back."""


def error(message: str, *, wait: float | None = None) -> None:
    """The one-line error every failure ends with; at most about MAX_ERROR_CHARS characters.
    When stderr cannot take it (a full disk), it is dropped: the caller's exit code still says
    what failed (it was exit 1 or 74 instead). `wait`: at most so many seconds for a paused
    reader (see STOPPED_ERROR_WAIT); None waits as any Unix tool does."""
    line = f"{line_break()}error: {shortened(one_line(message))}\n"
    try:
        if wait is None:
            sys.stderr.write(line)
            sys.stderr.flush()
        elif not _write_within(sys.stderr, line, wait):
            discard_output()
    except OSError:
        discard_output()


_ROOM = 256
"""Bytes written at a time once the descriptor has room: a pipe with room takes a page, a
terminal 256 bytes, without blocking."""


def _write_within(stream: Any, text: str, wait: float) -> bool:
    """Write `text` to `stream`'s descriptor, waiting at most `wait` s for room; False when the
    reader left none by then (the rest is dropped). A second Ctrl-C meanwhile drops it too."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured): as any output
        stream.write(text)
        stream.flush()
        return True
    deadline = time.monotonic() + wait
    data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    try:
        while data:
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                return False
            stream.flush()  # what the stream holds goes first (a line-buffered stderr: nothing)
            data = data[os.write(fd, data[:_ROOM]) :]
    except KeyboardInterrupt:
        return False
    return True


_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


class _Discarding:
    """A std stream whose flush no longer fails: what could not be written is dropped."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def output_failed(exc: OSError) -> bool:
    """True when `exc` is this process's output that could not be written (stdout on a full disk,
    /dev/full, an I/O error: a stream's error names no file). Then the streams stop failing on
    flush, so the one-line error is the only one (a closed pipe is click's: exit 1, silent)."""
    if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
        return False
    discard_output()
    return True


def claim_closed_std_fds() -> bool:
    """Open /dev/null on each of fds 0, 1 and 2 that this process was started without (`>&-`,
    `<&-`), so that no file opened later (the journal, an artifact) takes that number, where a
    child process's output or a stray write would land in it; sys.stdin and sys.stderr, which
    Python left None, read and write there. True when stdout was closed: the caller says so
    and exits 74 before doing anything."""
    closed_stdout = False
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
            continue  # taken since start-up: not ours to replace
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 1:
            closed_stdout = True
        mode, errors = ("r", None) if fd == 0 else ("w", "backslashreplace")
        setattr(sys, name, open(fd, mode, closefd=False, errors=errors))  # noqa: SIM115 (for the process's life)
    return closed_stdout


def discard_output() -> None:
    """From now on, what cannot be written is dropped (no `Exception ignored` at exit)."""
    sys.stdout = _Discarding(sys.stdout)
    sys.stderr = _Discarding(sys.stderr)
