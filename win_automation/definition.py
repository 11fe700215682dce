"""What a workflow is, independent of the engine that runs it.

A `Workflow` has a name, a pydantic input model and `Step`s; each step is a plain function
`(input, ctx) -> pydantic output` with its parents, retries, backoff and timeout. Both the local
engine and the Hatchet adapter run these definitions, so they hold only what Hatchet can express:
a DAG of tasks, per-task retries/backoff/execution timeout, a concurrency key (GUI workflows: one
run per VM) and desired worker labels.

Definitions live in the top-level `workflows/` package (`workflows.all_workflows()` finds them);
the engines supply the `StepContext`. A step reads only its declared parents' outputs
(`ctx.parent`), writes evidence through `ctx.artifacts` (see win_automation.artifacts.store), checks
`ctx.cancelled()` at safe points, and raises project errors: a non-transient WinAutomationError is
not retried by either engine, anything else is retried up to `retries` times.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from win_automation import jsontext, metrics
from win_automation.config import Config
from win_automation.errors import UsageError

if TYPE_CHECKING:  # the VM object is an operation; steps get it from their engine
    from win_automation.operations.vm import Vm

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

Out = TypeVar("Out", bound=BaseModel)


class ArtifactSink(Protocol):
    """What a step may do with its job's artifact folder (win_automation.artifacts.ArtifactWriter)."""

    def write_bytes(self, type: str, name: str, data: bytes) -> Any: ...

    def write_text(self, type: str, name: str, text: str) -> Any: ...

    def write_file(self, type: str, name: str, source: Any) -> Any: ...

    def open(self, type: str, name: str) -> AbstractContextManager[Any]: ...


class StepContext(Protocol):
    """What a running step gets from its engine."""

    job_id: str
    trace_id: str
    attempt: int
    config: Config
    log: logging.LoggerAdapter[logging.Logger]

    def parent(self, step: str, model: type[Out]) -> Out:
        """The output of the finished parent step `step`."""
        ...

    def cancelled(self) -> bool:
        """True once the job has been asked to stop; steps check it at safe points."""
        ...

    @property
    def artifacts(self) -> ArtifactSink:
        """The job's artifact writer (see win_automation.artifacts.store)."""
        ...

    @property
    def vm(self) -> Vm:
        """The VM (operations.vm.Vm): commands, PowerShell, transfers; bound to this attempt's
        cancel check (a cancelled job kills its running remote command) and to `emit`."""
        ...

    def emit(self, stream: str, text: str) -> None:
        """Live output (`stdout`/`stderr`) that the engine forwards to whoever waits for the job."""
        ...


StepFn = Callable[[Any, StepContext], BaseModel]


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    output: type[BaseModel]
    parents: tuple[str, ...] = ()
    retries: int = 0
    backoff_seconds: float = 1.0
    timeout_seconds: float = 300.0


@dataclass(frozen=True)
class Workflow:
    name: str
    input: type[BaseModel]
    steps: tuple[Step, ...]
    gui: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    artifact_types: tuple[str, ...] = ()
    """The artifact types its steps write (`ctx.artifacts.write_text(type, ...)`), kebab-case."""
    counters: tuple[str, ...] = ()
    """The metric counters its steps increment (`metrics.inc(name)`); declared when it is defined."""
    cron: Callable[[Config], str | None] | None = None
    """The workflow's cron schedule on Hatchet, read from the worker's config (None: none)."""

    def __post_init__(self) -> None:
        if not _KEBAB.match(self.name):
            raise ValueError(f"workflow name {self.name!r} must be kebab-case")
        for kind in self.artifact_types:
            if not _KEBAB.match(kind):
                raise ValueError(f"{self.name}: artifact type {kind!r} must be kebab-case")
        metrics.declare(*self.counters)
        seen: set[str] = set()
        for step in self.steps:
            if not _KEBAB.match(step.name):
                raise ValueError(f"{self.name}: step name {step.name!r} must be kebab-case")
            if step.name in seen:
                raise ValueError(f"{self.name}: step {step.name!r} is defined twice")
            missing = [p for p in step.parents if p not in seen]
            if missing:
                raise ValueError(
                    f"{self.name}: step {step.name!r} has parents {missing} not defined before it"
                )
            seen.add(step.name)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def descendants(self, name: str) -> list[str]:
        """Every step downstream of `name` (its dependents, theirs, ...), in definition order."""
        below = {name}
        for step in self.steps:
            if below.intersection(step.parents):
                below.add(step.name)
        return [s.name for s in self.steps if s.name in below and s.name != name]

    def parse_input(self, raw: str | Mapping[str, Any] | None, *, name: str = "--input") -> BaseModel:
        """The validated input model from JSON text or a mapping (None means `{}`); a bad value
        raises UsageError naming the field, e.g. `--input.hold_seconds: Input should be ...`."""
        data: Any = {} if raw is None else raw
        if isinstance(raw, str):
            try:
                data = jsontext.loads(raw)
            except ValueError as exc:
                raise UsageError(f"{name}: {exc}") from None
        if not isinstance(data, Mapping):
            raise UsageError(f"{name}: must be a JSON object, got {type(data).__name__}")
        try:
            return self.input.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            return_msg = first["msg"]
            if first["type"] == "extra_forbidden":
                return_msg = "unknown field"
            raise UsageError(f"{name}.{where}: {return_msg} (workflow {self.name})") from None
