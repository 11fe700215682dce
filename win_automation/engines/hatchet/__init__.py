"""The Hatchet engine: the only modules besides adapters that import hatchet_sdk. `client` compiles
workflows; `rpc` makes the engine's RPCs with a deadline and translates their errors; `runs`
triggers, follows and cancels runs; `runtime` runs a task's step on the worker through the shared
state machine; `worker` is the `win-automation worker` process.

Importing this package defers the start-up of the `hatchet_sdk` package (its `__init__`) to the
first time one of its names is read (`from hatchet_sdk import Hatchet`, by `client` and the
worker). That start-up imports the whole SDK, its REST client above all: 1.5-3 s of CPU. A job
command on Hatchet needs only the SDK's config, connection and gRPC contracts (`rpc`, `runs`:
0.3-0.5 s), which are modules of their own under the package.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any


def _defer_sdk_start_up() -> None:
    if "hatchet_sdk" in sys.modules:
        return
    spec = importlib.util.find_spec("hatchet_sdk")
    if spec is None or spec.loader is None:  # not installed: its import fails as it would have
        return
    package = importlib.util.module_from_spec(spec)  # its __path__: submodules import as usual
    lock = threading.Lock()

    def start_up(name: str) -> Any:
        if name.startswith("__"):  # __path__, __spec__... are set; others are not there
            raise AttributeError(name)
        with lock:
            if vars(package).pop("__getattr__", None) is start_up:
                assert spec.loader is not None
                spec.loader.exec_module(package)  # the package's __init__, as `import` runs it
        return getattr(package, name)

    vars(package)["__getattr__"] = start_up  # PEP 562: read for a name the module lacks
    sys.modules["hatchet_sdk"] = package


_defer_sdk_start_up()
