"""The local engine's helpers: the concrete StepContext and the job monitor thread.

`LocalStepContext` is what a step receives when the local engine runs it: its parents' outputs,
a logger carrying job_id/trace_id/step, the job's ArtifactWriter (created on first use) and a
cancellation check. `JobMonitor` is one daemon thread per engine with its own journal connection:
it refreshes the heartbeat of the jobs this process runs every HEARTBEAT_INTERVAL, polls their
cancel flag every `poll` seconds (so `jobs cancel` from another process is seen within ~0.1 s even
while a step is busy) and trips the deadline of the running step attempt. Either turns the step's
`ctx.cancelled()` true.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.jobs.journal import HEARTBEAT_INTERVAL, Journal

Out = TypeVar("Out", bound=BaseModel)
log = logging.getLogger(__name__)


class StepLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds job_id, trace_id, step and attempt to every line, keeping the caller's own extra."""

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs


class LocalStepContext:
    def __init__(
        self,
        *,
        job_id: str,
        trace_id: str,
        step: str,
        attempt: int,
        config: Config,
        parents: Mapping[str, BaseModel],
        artifacts: ArtifactWriter,
        job_cancel: threading.Event,
        attempt_cancel: threading.Event,
    ) -> None:
        self.job_id = job_id
        self.trace_id = trace_id
        self.step = step
        self.attempt = attempt
        self.config = config
        self.log: logging.LoggerAdapter[logging.Logger] = StepLogger(
            logging.getLogger(f"workflows.{step}"),
            {"job_id": job_id, "trace_id": trace_id, "step": step, "attempt": attempt},
        )
        self._parents = parents
        self._artifacts = artifacts
        self._job_cancel = job_cancel
        self._attempt_cancel = attempt_cancel

    def parent(self, step: str, model: type[Out]) -> Out:
        """The output of the declared parent `step`, as `model`."""
        if step not in self._parents:
            raise KeyError(
                f"step {self.step}: {step!r} is not one of its parents ({', '.join(self._parents)})"
            )
        output = self._parents[step]
        return output if isinstance(output, model) else model.model_validate(output.model_dump())

    def cancelled(self) -> bool:
        """True once the job was cancelled (from any process) or this attempt passed its timeout."""
        return self._job_cancel.is_set() or self._attempt_cancel.is_set()

    @property
    def artifacts(self) -> ArtifactWriter:
        return self._artifacts


class JobMonitor:
    """Heartbeats and cancel polling for the jobs this process runs."""

    def __init__(self, data_dir: Path, *, poll: float = 0.1, heartbeat: float = HEARTBEAT_INTERVAL) -> None:
        self._data_dir = data_dir
        self._poll = poll
        self._heartbeat = heartbeat
        self._jobs: dict[str, threading.Event] = {}
        self._deadlines: dict[str, tuple[float, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str) -> threading.Event:
        """Start watching `job_id`; the event is set when its cancellation is requested."""
        event = threading.Event()
        with self._lock:
            self._jobs[job_id] = event
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="job-monitor", daemon=True)
                self._thread.start()
        return event

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._deadlines.pop(job_id, None)

    def arm(self, job_id: str, deadline: float, event: threading.Event) -> None:
        """Set `event` once `time.monotonic()` passes `deadline` (a step attempt's timeout)."""
        with self._lock:
            self._deadlines[job_id] = (deadline, event)

    def disarm(self, job_id: str) -> None:
        with self._lock:
            self._deadlines.pop(job_id, None)

    def stop(self) -> None:
        """End the thread (the engine is closed); jobs still watched stop heart-beating."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        journal = Journal.open(self._data_dir, recover=False)
        try:
            self._watch(journal)
        finally:
            journal.close()

    def _watch(self, journal: Journal) -> None:
        last_beat = time.monotonic()
        while not self._stopped.wait(self._poll):
            with self._lock:
                jobs = dict(self._jobs)
                deadlines = list(self._deadlines.values())
            if not jobs:
                continue
            now = time.monotonic()
            for deadline, expired in deadlines:
                if now >= deadline:
                    expired.set()
            try:
                for job_id, event in jobs.items():
                    if not event.is_set() and journal.cancel_requested(job_id):
                        event.set()
                if time.monotonic() - last_beat >= self._heartbeat:
                    journal.heartbeat(*jobs)
                    last_beat = time.monotonic()
            except Exception:  # a busy or broken journal must not kill the monitor
                log.warning("job monitor could not reach the journal", exc_info=True, extra={"op": "monitor"})
