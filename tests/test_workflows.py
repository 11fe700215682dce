"""The workflow registry: it discovers every module of the `workflows` package by itself."""

from __future__ import annotations

import pytest

from win_automation.definition import Workflow
from win_automation.errors import UsageError
from workflows import all_workflows, get_workflow


def test_registry_finds_the_ping_workflow_and_only_workflows() -> None:
    found = all_workflows()
    assert "ping" in found and all(isinstance(w, Workflow) and w.name == n for n, w in found.items())
    ping = found["ping"]
    assert [s.name for s in ping.steps] == ["check-engine", "check-journal", "write-artifact"]
    assert not ping.gui and list(found) == sorted(found)


def test_unknown_workflow_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"WORKFLOW: no workflow named 'pong' \(known: .*ping"):
        get_workflow("pong")
