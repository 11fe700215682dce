"""Printing results: JSON for programs, rich tables for people (rich is imported only when used)."""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        # The first column is the row's key (a job id, a setting): never broken across lines.
        table.add_column(column, overflow="fold", no_wrap=index == 0)
    for row in rows:
        table.add_row(*("" if cell is None else shortened(str(cell)) for cell in row))
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


def error(message: str) -> None:
    """The one-line error every failure ends with; at most about MAX_ERROR_CHARS characters.
    When stderr cannot take it (a full disk), it is dropped: the caller's exit code still says
    what failed (it was exit 1 or 74 instead)."""
    try:
        sys.stderr.write(f"error: {shortened(one_line(message))}\n")
        sys.stderr.flush()
    except OSError:
        discard_output()


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


def discard_output() -> None:
    """From now on, what cannot be written is dropped (no `Exception ignored` at exit)."""
    sys.stdout = _Discarding(sys.stdout)
    sys.stderr = _Discarding(sys.stderr)
