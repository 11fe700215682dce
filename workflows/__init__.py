"""The workflow definitions both engines run, and the registry that finds them.

Every module of this package is imported by `all_workflows()`, and every module-level `Workflow`
object in it is registered under its name, so adding a workflow is adding a module: the engines,
the worker and the CLI need no change. Two workflows with one name are an error.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from win_automation.definition import Workflow


@cache
def all_workflows() -> dict[str, Workflow]:
    """Every workflow defined in the `workflows` package, by name, sorted by name."""
    found: dict[str, Workflow] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, Workflow):
                other = found.get(value.name)
                if other is not None and other is not value:
                    raise ValueError(f"workflow {value.name!r} is defined twice (in {module.__name__})")
                found[value.name] = value
    return dict(sorted(found.items()))


def get_workflow(name: str) -> Workflow:
    """The workflow called `name`; UsageError listing the known names when there is none."""
    from win_automation.errors import UsageError

    workflows = all_workflows()
    if name not in workflows:
        raise UsageError(f"WORKFLOW: no workflow named {name!r} (known: {', '.join(workflows) or 'none'})")
    return workflows[name]
