"""The Hatchet engine: the only modules besides adapters that import hatchet_sdk. `client` compiles
workflows; `rpc` makes the engine's RPCs with a deadline and translates their errors; `runs`
triggers, follows and cancels runs; `runtime` runs a task's step on the worker through the shared
state machine; `worker` is the `win-automation worker` process.

Importing this package defers the start-up of the `hatchet_sdk` package (its `__init__`) to the
first time one of its names is read (`from hatchet_sdk import Hatchet`, by `client` and the
worker). That start-up imports the whole SDK, its REST client above all: 1.5-3 s of CPU. A job
command on Hatchet needs only the SDK's config, connection and gRPC contracts (`rpc`, `runs`:
0.3-0.5 s), which are modules of their own under the package.

When it does start (the worker, and the action-listener process the SDK spawns from it, which
imports this package first: scripts/win-automation), the REST client's ~700 methods get their
argument validators (pydantic.validate_call) built at their first call, not at import: 40% of
the start-up's CPU (2.9 to 1.7 s). They validate as before.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

LIGHT = frozenset({"config", "connection", "contracts", "logger", "token", "utils"})
"""The SDK's subpackages a job command imports, which its package start-up is not needed for."""


class _Imported(importlib.abc.Loader):
    """A module the package's start-up imported already: the import that asked for it gets it."""

    def __init__(self, module: ModuleType) -> None:
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # as it was (the import machinery set this one's)


@contextlib.contextmanager
def _validators_built_at_first_call() -> Iterator[None]:
    """While it lasts, `pydantic.validate_call` (as modules import it) defers building a sync
    function's validator to the function's first call."""
    import pydantic

    real = pydantic.validate_call

    def deferred(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        if func is None:  # @validate_call(config=...)
            return functools.partial(deferred, **options)
        if inspect.iscoroutinefunction(func):  # its wrapper must stay a coroutine function
            return real(func, **options)
        built: Callable[..., Any] | None = None

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal built
            if built is None:  # two threads at once may both build it: the same validator
                built = real(func, **options)
            return built(*args, **kwargs)

        return call

    pydantic.validate_call = deferred
    try:
        yield
    finally:
        pydantic.validate_call = real


def _defer_sdk_start_up() -> None:
    if "hatchet_sdk" in sys.modules:
        return
    spec = importlib.util.find_spec("hatchet_sdk")
    if spec is None or spec.loader is None:  # not installed: its import fails as it would have
        return
    package = importlib.util.module_from_spec(spec)  # its __path__: submodules import as usual
    lock = threading.RLock()

    def start_up() -> None:
        with lock:
            if vars(package).pop("__getattr__", None) is not None:
                sys.meta_path.remove(finder)
                assert spec.loader is not None
                with _validators_built_at_first_call():
                    spec.loader.exec_module(package)  # the package's __init__, as `import` runs it

    def read(name: str) -> Any:  # PEP 562: a name the package lacks (before its start-up: all)
        if name.startswith("__"):  # __path__, __spec__... are set; others are not there
            raise AttributeError(name)
        start_up()
        return getattr(package, name)

    class Finder(importlib.abc.MetaPathFinder):
        """Any other subpackage (the SDK's client, its worker) starts the package first, as a
        plain import would: they read names from the package as they load."""

        def find_spec(
            self, name: str, path: Any, target: Any = None
        ) -> importlib.machinery.ModuleSpec | None:
            top, _, child = name.partition(".")
            if top != "hatchet_sdk" or "." in child or child in LIGHT:
                return None
            start_up()
            module = sys.modules.get(name)
            if module is None:
                return None
            imported = _Imported(module)
            module.__spec__ = None  # else the import machinery loads it again from its own spec
            return importlib.util.spec_from_loader(name, imported)

    finder = Finder()
    vars(package)["__getattr__"] = read
    sys.meta_path.insert(0, finder)
    sys.modules["hatchet_sdk"] = package


_defer_sdk_start_up()
