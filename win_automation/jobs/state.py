"""The states of a job and of each of its steps, and the transitions between them.

    queued ──> running ──> succeeded
      │           ├──────> failed ──────┐
      │           ├──────> cancelled    │ resume
      │           ├──────> interrupted ─┤
      │           └──────> skipped      │ (errors.Skipped: nothing to do, e.g. an idempotency
      │                                 │  check passed; the step's output says why)
      ├──> skipped ─────────────────────┤ (a step whose parent failed)
      ├──> cancelled                    │
      └──> interrupted                  v
                                      queued

- A job whose steps all succeeded or were skipped with errors.Skipped ends `skipped` (exit 0).
- `interrupted`: the owner process died (or stopped heart-beating) while the job was queued or
  running; `jobs resume` puts it back to `queued`, as it does a `failed` job.
- `running -> running` is legal for a step: a new attempt (a retry) of the same step.
- An interrupted job may also be given up on: `interrupted -> cancelled`.
- succeeded and cancelled are final. Anything else raises errors.IllegalTransition (a bug, or a
  race another process won, e.g. two `jobs resume` of one job).
"""

from __future__ import annotations

from enum import StrEnum

from win_automation.errors import IllegalTransition


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"


Q, R, S, F, C, K, I = (  # noqa: E741
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.SKIPPED,
    JobState.INTERRUPTED,
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({R, C, K, I}),
    R: frozenset({R, S, F, C, I, K}),
    S: frozenset(),
    F: frozenset({Q}),
    C: frozenset(),
    K: frozenset({Q}),
    I: frozenset({Q, C}),
}

ACTIVE: frozenset[JobState] = frozenset({Q, R})
"""States in which an owner process is responsible for the job."""

FINISHED: frozenset[JobState] = frozenset({S, F, C, K, I})
RESUMABLE: frozenset[JobState] = frozenset({F, I})


def parse_state(value: str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a state (one of {', '.join(s.value for s in JobState)})"
        ) from None


def check_transition(current: JobState, new: JobState, *, what: str = "job") -> None:
    """Raise IllegalTransition unless `current -> new` is allowed."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{what}: cannot go from {current.value} to {new.value}")
