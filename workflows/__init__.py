"""The workflow definitions both engines run, and the registry that finds them.

Every module of this package is imported by `all_workflows()`, and every module-level `Workflow`
object in it is registered under its name, so adding a workflow is adding a module: the engines,
the worker and the CLI need no change. Two workflows with one name are an error.

Workflows of your own, outside this package, come from the modules named (comma-separated) in
`WIN_AUTOMATION_WORKFLOW_MODULES`, importable from the Python path: give the worker and the CLI
the same value.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache

from win_automation.definition import Workflow

MODULES_ENV = "WIN_AUTOMATION_WORKFLOW_MODULES"


@cache
def all_workflows() -> dict[str, Workflow]:
    """Every workflow defined in the `workflows` package, by name, sorted by name."""
    from win_automation.errors import ConfigError

    found: dict[str, Workflow] = {}
    names = [f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]
    names = [n for n in names if not n.rpartition(".")[2].startswith("_")]
    extra = os.environ.get(MODULES_ENV, "")
    names += [name.strip() for name in extra.split(",") if name.strip()]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{MODULES_ENV}: cannot import {name!r} ({exc})") from None
        for value in vars(module).values():
            if isinstance(value, Workflow):
                other = found.get(value.name)
                if other is not None and other is not value:
                    raise ConfigError(f"workflow {value.name!r} is defined twice (in {module.__name__})")
                found[value.name] = value
    return dict(sorted(found.items()))


def get_workflow(name: str) -> Workflow:
    """The workflow called `name`; UsageError listing the known names when there is none."""
    from win_automation.errors import UsageError

    workflows = all_workflows()
    if name not in workflows:
        raise UsageError(f"WORKFLOW: no workflow named {name!r} (known: {', '.join(workflows) or 'none'})")
    return workflows[name]
