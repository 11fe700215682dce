"""Metric lines: their format, stdout and file output, and the emitter's schedule."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest

from win_automation import metrics
from win_automation.errors import StorageError

LINE = re.compile(r"^metric=([a-z_]+) value=(\d+) ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_line_format_and_counters() -> None:
    metrics.reset()
    metrics.inc("jobs_enqueued_total")
    with pytest.raises(ValueError, match="unknown metric 'example_runs_total'"):
        metrics.inc(
            "example_runs_total"
        )  # until a workflow declares it (aloha-task declares aloha_runs_total)
    metrics.declare("example_runs_total")
    metrics.inc("example_runs_total", 2)
    lines = metrics.format_lines(metrics.snapshot(), 1_800_000_000.5)
    assert lines[0] == "metric=jobs_enqueued_total value=1 ts=2027-01-15T08:00:00.500Z"
    assert [LINE.match(line).group(1) for line in lines] == list(metrics.snapshot())  # type: ignore[union-attr]
    assert "metric=example_runs_total value=2 " in "\n".join(lines)
    with pytest.raises(ValueError, match="unknown metric 'jobs_total'"):
        metrics.inc("jobs_total")


def test_emitter_appends_to_a_file_every_interval(tmp_path: Path) -> None:
    metrics.reset()
    path = tmp_path / "m" / "metrics.log"
    path.parent.mkdir()
    path.write_text("earlier line\n")
    with metrics.emitting(0.1, path):
        metrics.inc("jobs_failed_total")
        time.sleep(0.45)
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"
    body = lines[1:]
    assert all(LINE.match(line) for line in body)
    rounds = len(body) // len(metrics.snapshot())
    assert len(body) % len(metrics.snapshot()) == 0 and 3 <= rounds <= 7
    assert body[-len(metrics.snapshot()) + 2].startswith("metric=jobs_failed_total value=1 ")


def test_emitter_writes_to_a_stream_and_can_be_off() -> None:
    stream = io.StringIO()
    with metrics.emitting(30, stream=stream):
        pass
    assert len(stream.getvalue().splitlines()) == len(metrics.snapshot())  # the last round on exit
    with metrics.emitting(30, enabled=False, stream=stream) as emitter:
        assert emitter is None
    with pytest.raises(ValueError, match="more than zero"):
        metrics.MetricsEmitter(0)


def test_a_fifo_nobody_reads_or_a_paused_reader_fails_the_write_at_once(tmp_path: Path) -> None:
    """metrics.path a FIFO: with no reader, or one that stopped taking lines (its buffer full),
    each round fails at once (exit 74 at the end) instead of holding the command for good."""
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    emitter = metrics.MetricsEmitter(30, fifo)
    started = time.monotonic()
    with pytest.raises(StorageError, match="a FIFO no process reads"):
        emitter.emit()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: a paused collector
    try:
        with pytest.raises(StorageError, match="whose reader does not take the lines"):
            for _ in range(100_000):  # the pipe's buffer fills within a few rounds
                emitter.emit()
        assert os.read(reader, 100).startswith(b"metric=")  # what fitted went through
    finally:
        os.close(reader)
    assert time.monotonic() - started < 5
