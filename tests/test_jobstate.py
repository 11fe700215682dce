"""The job/step state machine: every allowed transition, and every other one refused."""

from __future__ import annotations

import itertools

import pytest

from win_automation.errors import IllegalTransition
from win_automation.jobs.state import TRANSITIONS, JobState, check_transition, parse_state

ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "skipped"),
    ("queued", "interrupted"),
    ("running", "running"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "interrupted"),
    ("running", "skipped"),
    ("failed", "queued"),
    ("skipped", "queued"),
    ("interrupted", "queued"),
    ("interrupted", "cancelled"),
}


def test_the_table_is_exactly_the_documented_one() -> None:
    table = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize(("current", "new"), list(itertools.product(JobState, JobState)))
def test_every_pair(current: JobState, new: JobState) -> None:
    if (current.value, new.value) in ALLOWED:
        check_transition(current, new)
    else:
        with pytest.raises(IllegalTransition, match=f"cannot go from {current.value} to {new.value}"):
            check_transition(current, new, what="job x")


def test_final_states_have_no_way_out() -> None:
    assert not TRANSITIONS[JobState.SUCCEEDED] and not TRANSITIONS[JobState.CANCELLED]


def test_parse_state_names_the_choices() -> None:
    assert parse_state("failed") is JobState.FAILED
    with pytest.raises(ValueError, match=r"'done' is not a state .*queued, running"):
        parse_state("done")
