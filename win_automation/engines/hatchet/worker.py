"""The Hatchet worker process behind `win-automation worker`.

`run_worker` compiles every workflow from `workflows.all_workflows()` (a workflow added later is
picked up with no change here), registers them with the engine and serves their tasks with
`slots` concurrent steps, advertising `labels` (for example the VM it can reach) so that
workflows which declare labels are routed to it. Next to the SDK's worker it runs:

- the project's log lines, in this process and in the SDK's listener subprocess (the client
  config is a subclass that installs them when the subprocess unpickles it);
- a drain on SIGTERM/SIGINT: the SDK pauses assignment and waits for running steps; if they
  are still running after `grace` seconds (or on a second signal) the worker exits at once with
  code 1, and the engine hands their tasks to another worker when the heartbeats stop;
- a watch on the SDK's listener subprocess (engines.hatchet.listener): when it ends other than by
  a drain's own stop (the engine refused the worker or its token, the process was killed, during
  a drain too) the worker ends at once with a one-line error, exit 4 for a refused token, else 3
  (the SDK exited 0, hung, or waited out the grace);
- retention (artifact folders and journal records: artifacts.retention.scheduled_retention) at
  start and every hour;
- optional metric lines (`--metrics`).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from types import FrameType
from typing import Any

from hatchet_sdk import ClientConfig, Hatchet

from win_automation import log as project_log
from win_automation import metrics
from win_automation.artifacts.retention import scheduled_retention
from win_automation.config import Config
from win_automation.engines.hatchet.client import compile_workflow
from win_automation.engines.hatchet.listener import ListenerWatch, exit_now, install_refusal_exit
from win_automation.engines.hatchet.rpc import check_engine_version, client_config, register_workflows
from win_automation.engines.hatchet.runtime import TaskRuntime
from win_automation.errors import ConfigError

log = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0
FORCED_EXIT = 1


def route_sdk_logs(level: int) -> None:
    """The SDK's `hatchet` logger writes through the project's key=value handler (warnings and
    up, everything with --debug) instead of its own stdout format."""
    sdk = logging.getLogger("hatchet")
    sdk.handlers[:] = []
    sdk.propagate = True
    sdk.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


class WorkerClientConfig(ClientConfig):
    """The SDK's client config; unpickled in the listener subprocess, it installs our logs."""

    project_log_level: int = logging.INFO

    def __setstate__(self, state: Any) -> None:
        super().__setstate__(state)
        project_log.register_secret(self.token)
        project_log.install(self.project_log_level)
        route_sdk_logs(self.project_log_level)
        install_refusal_exit()


def default_name() -> str:
    return f"win-automation-{socket.gethostname()}"


def _retention_loop(config: Config, stop: threading.Event) -> None:
    while True:
        try:
            scheduled_retention(config)
        except Exception:  # retention must never stop the worker
            log.warning("retention failed", exc_info=True, extra={"op": "retention"})
        if stop.wait(RETENTION_INTERVAL):
            return


def _install_drain(grace: float) -> threading.Event:
    """Wrap the SDK's SIGTERM/SIGINT handlers: log, drain, and force the exit after `grace`; the
    event is set once draining."""
    draining = threading.Event()

    def force(why: str = "grace period over") -> None:
        log.warning(f"{why}: leaving running steps to the engine", extra={"op": "drain"})
        # step threads may be stuck in a remote call: do not wait for them (the SDK's listener
        # subprocess sees its parent gone and stops; the engine then reassigns the steps)
        exit_now(FORCED_EXIT)

    for signum in (signal.SIGTERM, signal.SIGINT):
        original = signal.getsignal(signum)

        def handler(number: int, frame: FrameType | None, original: Any = original) -> None:
            if draining.is_set():
                # not in this handler: the code it interrupted may hold a lock exit_now needs
                threading.Thread(target=force, args=("second signal",), daemon=True).start()
                return
            draining.set()
            log.info(
                "draining: no new steps, finishing running ones",
                extra={"op": "drain", "signal": signal.Signals(number).name, "grace_s": grace},
            )
            timer = threading.Timer(grace, force)
            timer.daemon = True
            timer.start()
            if callable(original):
                original(number, frame)

        signal.signal(signum, handler)
    return draining


def run_worker(
    config: Config,
    workflows: dict[str, Any],
    *,
    name: str,
    slots: int,
    labels: dict[str, str],
    grace: float,
    metrics_interval: float | None,
    report: Callable[[str], None],
    log_level: int = logging.INFO,
) -> int:
    """Serve every workflow's tasks until a signal drains the worker; the exit code. A listener
    that fails ends the process with its error, shown by `report` (the CLI's error line)."""
    if not workflows:
        raise ConfigError("no workflows are defined in the workflows package: nothing to serve")
    version = check_engine_version(config)
    sdk_config = client_config(config, WorkerClientConfig, project_log_level=log_level)
    route_sdk_logs(log_level)
    runtime = TaskRuntime(config)
    executor = ThreadPoolExecutor(max_workers=slots + 4, thread_name_prefix="step")
    hatchet = Hatchet(config=sdk_config)
    compiled = [compile_workflow(hatchet, wf, lambda: runtime, lambda: executor) for wf in workflows.values()]
    register_workflows(config, compiled)
    with warnings.catch_warnings():  # 1.43 takes labels only as a dict, and warns about it
        warnings.simplefilter("ignore", DeprecationWarning)
        worker = hatchet.worker(name, slots=slots, labels=dict(labels), workflows=compiled)
    draining = _install_drain(grace)
    stop = threading.Event()
    threading.Thread(target=_retention_loop, args=(config, stop), name="retention", daemon=True).start()
    log.info(
        "worker starting",
        extra={
            "op": "worker",
            "worker": name,
            "slots": slots,
            "labels": ",".join(f"{k}={v}" for k, v in labels.items()),
            "workflows": ",".join(workflows),
            "engine": config.hatchet.host_port,
            "engine_version": version,
        },
    )
    emitting = metrics.emitting(metrics_interval, config.metrics.path) if metrics_interval else nullcontext()
    watch = ListenerWatch(worker, draining, config, report)
    code = 0
    try:
        with emitting:
            worker.start()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        watch.finish()  # the SDK returned as its listener ended other than by a drain: not exit 0
        stop.set()
        executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped", extra={"op": "worker", "worker": name, "code": code})
    return code
