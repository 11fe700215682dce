"""The VM desktop held by a GUI workflow's work, on either engine.

One desktop, one GUI job at a time: `holding_desktop` takes the per-VM lock (win_automation.jobs.
locks, a flock in the data dir shared by every process on this host) for a GUI workflow and does
nothing for others. The local engine holds it for the whole job; a Hatchet worker for each step of
a GUI job (Hatchet's own concurrency key already runs one GUI run per VM at a time; the lock also
keeps a local GUI job on the same host off that desktop meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from win_automation.config import Config
from win_automation.definition import Workflow
from win_automation.jobs.locks import vm_lock

log = logging.getLogger(__name__)


@contextmanager
def holding_desktop(
    config: Config,
    workflow: Workflow,
    job_id: str,
    cancelled: Callable[[], bool],
    *,
    always: bool = False,
) -> Iterator[None]:
    """The per-VM lock for a GUI workflow (or, with `always`, any job: one that loads a snapshot
    into the VM must not do it under another GUI job)."""
    if not (workflow.gui or always):
        yield
        return
    vm = config.ssh.vm_key
    with vm_lock(
        config.data.dir,
        vm,
        owner=job_id,
        cancelled=cancelled,
        on_wait=lambda holder: log.warning(
            "waiting for the VM desktop: another GUI job holds it",
            extra={"op": "lock", "job_id": job_id, "vm": vm, "holder": holder or "unknown"},
        ),
    ):
        yield
