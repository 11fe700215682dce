"""`JobStepContext`: what a step receives from either engine.

Its parents' outputs, a logger carrying job_id/trace_id/step/attempt, the job's ArtifactWriter,
a cancellation check (the job was cancelled, or this attempt passed its deadline), the VM
(`ctx.vm`, an operations.vm.Vm bound to the cancel check and the live-output sink) and `emit` for
live output, which the engine forwards to whoever waits for the job (the CLI prints it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel

from win_automation.artifacts.store import ArtifactWriter
from win_automation.config import Config
from win_automation.operations.vm import Emit, Vm

Out = TypeVar("Out", bound=BaseModel)


class StepLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds job_id, trace_id, step and attempt to every line, keeping the caller's own extra."""

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs


class JobStepContext:
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
        emit: Emit | None = None,
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
        self._emit = emit
        self._vm: Vm | None = None

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

    @property
    def vm(self) -> Vm:
        """The VM (config `ssh.*`), bound to this attempt's cancel check and live output."""
        if self._vm is None:
            self._vm = Vm(self.config, cancelled=self.cancelled, emit=self._emit)
        return self._vm

    def emit(self, stream: str, text: str) -> None:
        """Live output (`stdout` or `stderr`) for whoever waits for the job; dropped when nobody does."""
        if self._emit is not None:
            self._emit(stream, text)
