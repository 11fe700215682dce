"""`JobMonitor`: one daemon thread per engine process with its own journal connection (opened at
the first poll that has a job to watch, so a job shorter than `poll` never opens it).

It refreshes the heartbeat of the jobs this process runs every HEARTBEAT_INTERVAL, polls their
cancel flag (and their ownership: a job taken over by another process, e.g. resumed while this one
was paused, counts as cancelled here) every `poll` seconds, so `jobs cancel` from another process is
seen within ~0.1 s even while a step is busy, and trips the deadline of the running step attempt.
Either turns the step's `ctx.cancelled()` true. Its connection waits at most BUSY_TIMEOUT for a
journal another process holds locked (then tries again a heartbeat later), so that a lock does not
make a step's deadline late by the journal's 10 s busy timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from win_automation.definition import Step, StepContext
from win_automation.errors import Cancelled, JournalBusy, OperationTimeout
from win_automation.jobs.journal import Journal
from win_automation.jobs.ownership import HEARTBEAT_INTERVAL

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 0.25
"""Seconds the monitor's journal writes (heartbeats) wait for a lock before the next poll."""


class JobMonitor:
    """Heartbeats and cancel polling for the jobs this process runs."""

    def __init__(self, data_dir: Path, *, poll: float = 0.1, heartbeat: float = HEARTBEAT_INTERVAL) -> None:
        self._data_dir = data_dir
        self._poll = poll
        self._heartbeat = heartbeat
        self._jobs: dict[str, tuple[threading.Event, int | None]] = {}
        self._deadlines: dict[object, tuple[float, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._journal: Journal | None = None  # the thread's own, opened at its first poll of a job

    def watch(self, job_id: str, epoch: int | None = None) -> threading.Event:
        """Start watching `job_id`, owned with `epoch` (None: not fenced); the event is set when
        its cancellation is requested or another process took it over."""
        event = threading.Event()
        with self._lock:
            self._jobs[job_id] = (event, epoch)
            self._start()
        return event

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def arm(self, key: object, deadline: float, event: threading.Event) -> None:
        """Set `event` once `time.monotonic()` passes `deadline` (a step attempt's timeout)."""
        with self._lock:
            self._deadlines[key] = (deadline, event)
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-monitor", daemon=True)
            self._thread.start()

    def disarm(self, key: object) -> None:
        with self._lock:
            self._deadlines.pop(key, None)

    def run_attempt(
        self,
        step: Step,
        input: BaseModel,
        ctx: StepContext,
        job_cancel: threading.Event,
        attempt_cancel: threading.Event,
    ) -> tuple[BaseException | None, object]:
        """Run one attempt of `step` in this thread with its deadline armed: (error, value).

        The step's `ctx.cancelled()` turns true when the job is cancelled (error: Cancelled) or the
        deadline passes; an attempt that ends after its deadline, however it ends, is a timeout
        (OperationTimeout, exit 124, transient) on either engine."""
        key = object()
        deadline = time.monotonic() + step.timeout_seconds
        self.arm(key, deadline, attempt_cancel)
        error: BaseException | None = None
        value: object = None
        try:
            value = step.fn(input, ctx)
        except Exception as exc:
            error = exc
        finally:
            self.disarm(key)
        if job_cancel.is_set() and not isinstance(error, Cancelled):
            return Cancelled(f"step {step.name} cancelled"), None
        if attempt_cancel.is_set() or time.monotonic() > deadline:
            timeout = OperationTimeout(f"step {step.name} passed its timeout of {step.timeout_seconds:g}s")
            timeout.__cause__ = error
            timeout.result = getattr(error, "result", None)
            return timeout, None
        return error, value

    def stop(self) -> None:
        """End the thread (the engine is closed); jobs still watched stop heart-beating."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        try:
            self._watch()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def _connection(self) -> Journal:
        """The thread's own connection, opened when first needed: a job that ends before the
        first poll (most CLI jobs) costs no second connection."""
        if self._journal is None:
            self._journal = Journal.open(self._data_dir, recover=False, busy_timeout=BUSY_TIMEOUT)
        return self._journal

    def _watch(self) -> None:
        last_beat = time.monotonic()
        failing = False  # the last poll could not reach the journal
        while not self._stopped.wait(self._poll):
            with self._lock:
                jobs = dict(self._jobs)
                deadlines = list(self._deadlines.values())
            now = time.monotonic()
            for deadline, expired in deadlines:
                if now >= deadline:
                    expired.set()
            if not jobs:
                continue
            try:
                journal = self._connection()
                for job_id, (event, epoch) in jobs.items():
                    if event.is_set():
                        continue
                    cancel, current = journal.control(job_id)
                    if cancel or (epoch is not None and current != epoch):
                        event.set()
                if time.monotonic() - last_beat >= self._heartbeat:
                    # tried again a heartbeat later, not at every poll, when it fails
                    last_beat = time.monotonic()
                    journal.heartbeat({job_id: epoch for job_id, (_, epoch) in jobs.items()})
                    failing = False  # written again: the outage is over
            except Exception as exc:  # a busy or broken journal must not kill the monitor
                # said once per outage (a full disk fails every heartbeat of an hour-long job);
                # a lock is said by the job's own write, once
                if not failing:
                    level = logging.INFO if isinstance(exc, JournalBusy) else logging.WARNING
                    log.log(
                        level,
                        "job monitor could not reach the journal",
                        exc_info=True,
                        extra={"op": "monitor"},
                    )
                failing = True
