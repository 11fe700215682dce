"""In-process counters and the emitter that writes them as `metric=<name> value=<n> ts=<RFC3339>`.

Counters (process-wide, reset when the process restarts, by design): the engines' own
jobs_enqueued_total, jobs_completed_total, jobs_failed_total, jobs_cancelled_total, and those a
workflow declares (`Workflow(counters=("aloha_runs_total",))` calls `declare`). Any layer may
count a declared counter: `metrics.inc("aloha_runs_total")`; an undeclared name is a bug. A level
rather than a count (the supervisor's `supervisor_breaker_state`) is set with `set_value`.

Long-running commands (`run`, the worker, the supervisor) take `--metrics --metrics-interval 30s`
and wrap their work in `with emitting(interval, path):`, which starts a daemon thread that writes
one line per counter every interval, and a last round on exit. Lines go to stdout, or are
appended to `metrics.path` (`WIN_AUTOMATION_METRICS_PATH`) when it is set.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from win_automation.durations import rfc3339
from win_automation.errors import StorageError

log = logging.getLogger(__name__)

COUNTERS: tuple[str, ...] = (
    "jobs_enqueued_total",
    "jobs_completed_total",
    "jobs_failed_total",
    "jobs_cancelled_total",
)

_lock = threading.Lock()
_values: dict[str, int] = dict.fromkeys(COUNTERS, 0)


def declare(*names: str) -> None:
    """Make counters known (at 0), e.g. a workflow's; declaring one twice is harmless."""
    with _lock:
        for name in names:
            _values.setdefault(name, 0)


def set_value(name: str, value: int) -> None:
    """Set a declared metric that is a level, not a count (the supervisor's breaker state)."""
    if name not in _values:
        raise ValueError(f"unknown metric {name!r}")
    with _lock:
        _values[name] = value


def inc(name: str, amount: int = 1) -> None:
    if name not in _values:
        raise ValueError(f"unknown metric {name!r} (one of {', '.join(_values)})")
    with _lock:
        _values[name] += amount


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_values)


def reset() -> None:
    with _lock:
        for name in _values:
            _values[name] = 0


def format_lines(values: dict[str, int], timestamp: float) -> list[str]:
    ts = rfc3339(timestamp)
    return [f"metric={name} value={value} ts={ts}" for name, value in values.items()]


_WHY = {
    errno.ENXIO: "a FIFO no process reads",
    errno.EAGAIN: "a FIFO whose reader does not take the lines (they were dropped)",
}


def _append(path: Path, data: bytes) -> None:
    """Append `data` to `path` without ever blocking: a FIFO that nobody reads (ENXIO), or whose
    reader stopped taking lines (EAGAIN, its buffer full: a paused collector), fails the write
    instead of holding the metrics thread, and with it the command's end, for good."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class MetricsEmitter:
    """Writes every counter each `interval` seconds to `path` (appended) or `stream`."""

    def __init__(self, interval: float, path: Path | None = None, stream: TextIO | None = None) -> None:
        if interval <= 0:
            raise ValueError("the metrics interval must be more than zero")
        self.interval = interval
        self.path = path
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)

    def emit(self) -> None:
        text = "".join(line + "\n" for line in format_lines(snapshot(), time.time()))
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _append(self.path, text.encode("ascii"))
            except OSError as exc:  # a full or read-only disk: named, exit 74 (not stdout's error)
                why = _WHY.get(exc.errno or 0) or exc.strerror or str(exc)
                raise StorageError(f"metrics.path: cannot write {self.path}: {why}") from None
        else:
            stream = self.stream or sys.stdout
            stream.write(text)
            stream.flush()

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.emit()
                failing = False
            except Exception as exc:  # the thread goes on; said once per outage, and by stop()
                if not failing:
                    log.warning("metrics could not be written", extra={"op": "metrics", "err": str(exc)})
                failing = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last round, so a short run still reports its counters."""
        self._stop.set()
        self._thread.join()
        self.emit()


@contextmanager
def emitting(
    interval: float, path: Path | None = None, *, enabled: bool = True, stream: TextIO | None = None
) -> Iterator[MetricsEmitter | None]:
    if not enabled:
        yield None
        return
    emitter = MetricsEmitter(interval, path, stream)
    emitter.start()
    try:
        yield emitter
    finally:
        emitter.stop()
