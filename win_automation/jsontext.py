"""Reading JSON text that a user gave (a config file, `--input`, `--input-file`) without ever
raising anything but a ValueError whose message is one line.

The standard library raises RecursionError for deeply nested arrays or objects (about 1000
levels), ValueError for an integer of more than 4300 digits, and blocks forever when asked to
read a FIFO with no writer. `loads` turns the first two into one-line reasons (and refuses nesting
deeper than MAX_DEPTH before the parser recurses); `read_text` refuses anything that is not a
regular file before opening it, and takes a UTF-8 BOM. An object's key given twice is refused.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

MAX_DEPTH = 200
# The largest text read: a config or a job's input (which the journal keeps and every warm path
# carries whole) of more is a mistake; it would cost about ten times its size in memory.
MAX_TEXT_BYTES = 32 * 1024 * 1024


def _depth(text: str) -> int:
    """The deepest nesting of `[`/`{` outside strings (cheap: one pass, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: the standard library keeps the last of two (a
    section or setting written twice, say by a merge, would lose the first without a word)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def loads(text: str) -> Any:
    """The JSON value of `text`; ValueError with a one-line reason when it is not usable JSON."""
    if ("[" in text or "{" in text) and _depth(text) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer of more digits than int() converts
        if "digits" in str(exc):
            raise ValueError("holds an integer with more than 4300 digits") from None
        raise ValueError(str(exc).splitlines()[0]) from None


def read_text(path: Path) -> str:
    """The UTF-8 text of regular file `path`; ValueError saying why it cannot be read (a FIFO, a
    device or a directory is refused before it is opened, so nothing blocks; a file over
    MAX_TEXT_BYTES is refused after reading no more than that)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ValueError("is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError("is not a regular file (a FIFO, socket or device)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
    except PermissionError:
        raise ValueError("permission denied") from None
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise ValueError(f"over the {MAX_TEXT_BYTES >> 20} MiB it may be ({os.stat(path).st_size >> 20} MiB)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM, as Windows' Notepad writes it
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
