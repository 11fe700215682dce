"""key=value log lines on stderr, one per event, and the redaction of secrets.

Schema: `ts` (RFC3339, UTC), `level` (debug, info, warn, error), `component`, `op`, `msg`, then
optional `err`, `duration_ms` and context keys in the order given. A value with a space, `=`, a
quote, a backslash, a control or a non-ASCII character is double-quoted; inside quotes `"` and
`\\` are escaped, newlines are `\\n`, and non-ASCII characters are `\\uXXXX` (or `\\UXXXXXXXX`).

Modules log with `logging.getLogger(__name__)` and pass `extra={"op": ..., **context}`; only the
CLI and the worker call `install()`. Every value the formatter writes passes through the
redactor, which masks the secret values registered with `register_secret` and any SecretStr.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from win_automation.durations import rfc3339

_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "op"}
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+,;%~^()\[\]{}<>!?#$&*|'`-]+")
_MASK = "***"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it would appear in a log line from now on."""
    if value and len(value) >= 3:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    if char in '"\\':
        return "\\" + char
    if code < 0x20 or code == 0x7F or code > 0x7E:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def encode_value(value: object) -> str:
    """One value as it appears after `key=`: bare when plain, else quoted and escaped."""
    if hasattr(value, "get_secret_value"):
        return _MASK
    text = redact(value if isinstance(value, str) else str(value))
    if text and _PLAIN.fullmatch(text):
        return text
    return '"' + "".join(_escape_char(c) for c in text) + '"'


def format_line(fields: Iterable[tuple[str, object]]) -> str:
    return " ".join(f"{key}={encode_value(value)}" for key, value in fields if value is not None)


def component_of(logger_name: str) -> str:
    """`win_automation.adapters.ssh` -> `adapters.ssh`; other loggers keep their name."""
    return logger_name.removeprefix("win_automation.") if logger_name != "win_automation" else "core"


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: list[tuple[str, Any]] = [
            ("ts", rfc3339(record.created)),
            ("level", _LEVELS.get(record.levelname, record.levelname.lower())),
            ("component", component_of(record.name)),
            ("op", getattr(record, "op", None) or record.funcName),
            ("msg", record.getMessage()),
        ]
        if record.exc_info and record.exc_info[1] is not None:
            fields.append(("err", f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"))
        fields.extend((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        return format_line(fields)


Divert = Callable[[str], bool]
_divert: Divert | None = None


def divert(to: Divert | None) -> None:
    """Hand the installed handler's lines (each with its newline) to `to` instead of writing them,
    while it takes them (returns True); None: write them again. The local engine routes them
    through a job's live output, which shares the CLI's stderr: in order with the command's
    output, and never blocking a thread on a reader that is paused (win_automation.engines.
    live_output)."""
    global _divert
    _divert = to


_midline: set[str] = set()
"""The streams (`stdout`, `stderr`) whose live job output so far ends mid-line."""


def live_written(stream: str, text: str) -> None:
    """Note where a job's live output on `stream` ended (cli.job_output.live), for `line_break`."""
    if text:
        (_midline.discard if text.endswith("\n") else _midline.add)(stream)


def line_break() -> str:
    """A newline for the next line on stderr (a log line, the error) to start on its own line: live
    stderr output stopped mid-line (a timeout, a cap, a cancel), or stdout's when both go to a
    terminal; a piped stdout is left as the command wrote it. Once said, it is not said again."""
    terminal = "stdout" in _midline and sys.stdout.isatty() and sys.stderr.isatty()
    needed = "stderr" in _midline or terminal
    _midline.clear()
    return "\n" if needed else ""


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def format(self, record: logging.LogRecord) -> str:
        # the break is part of the line: it goes the line's way (diverted past a paused reader)
        return (line_break() if _midline else "") + super().format(record)

    def emit(self, record: logging.LogRecord) -> None:
        if sys.meta_path is None:
            # The interpreter's teardown: a library's object collected now (an asyncio task of
            # playwright's, a paramiko channel) may log, but nothing can be formatted any more;
            # the record is dropped instead of a `--- Logging error ---` traceback.
            return
        to = _divert
        if to is None:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if not to(line):
            super().emit(record)


def install(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the project's log lines to stderr in the key=value schema (CLI and worker only)."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("win_automation", "workflows"):
        logging.getLogger(name).setLevel(level)
    # paramiko logs the faults the SSH adapter translates and reports itself (with tracebacks, in
    # its own transport thread): shown only with --debug.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)
    # A library's Python warning (cryptography 51's DSA deprecation, say) would print two raw lines
    # around the CLI's one-line error: it becomes a log line, shown only with --debug.
    warnings.showwarning = _log_warning
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """warnings.showwarning, as a log line (logging.captureWarnings, but set on each install: a
    catch_warnings block restores the original and captureWarnings would not set it again)."""
    logging.getLogger("py.warnings").warning(
        "%s: %s", category.__name__, message, extra={"op": "warning", "at": f"{filename}:{lineno}"}
    )


class Timer:
    """`with Timer() as t: ...` then `t.ms` for the `duration_ms` key."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.ms = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = round((time.perf_counter() - self._start) * 1000)
