from __future__ import annotations

import pytest
from pydantic import BaseModel

from win_automation.definition import Step, Workflow


class In(BaseModel):
    x: int = 0


def noop(inp: In, ctx: object) -> In:
    return inp


def step(name: str, *parents: str) -> Step:
    return Step(name=name, fn=noop, output=In, parents=parents)


def test_a_valid_dag() -> None:
    wf = Workflow(name="ssh-exec", input=In, steps=(step("a"), step("b", "a"), step("c", "a", "b")))
    assert wf.step("c").parents == ("a", "b")


@pytest.mark.parametrize(
    ("name", "steps", "message"),
    [
        ("Bad_Name", (step("a"),), "kebab-case"),
        ("ok", (step("A"),), "kebab-case"),
        ("ok", (step("a"), step("a")), "defined twice"),
        ("ok", (step("b", "a"), step("a")), "not defined before"),
    ],
)
def test_invalid_definitions_are_refused(name: str, steps: tuple[Step, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Workflow(name=name, input=In, steps=steps)
