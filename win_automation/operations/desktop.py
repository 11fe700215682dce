"""The desktop probe every GUI workflow runs first: is the VM's desktop there to be used?

    require_desktop(ctx.vm)        # DesktopUnavailable (exit 1) when locked or nobody logged on

It runs `scripts/windows/Get-DesktopState.ps1` over SSH, which looks at the console session (the
one on the VM's screen): no `explorer.exe` there means nobody is logged on (the sign-in screen runs
`LogonUI.exe` too); `explorer.exe` and `LogonUI.exe` both there means the desktop is locked.
GUI work (Aloha, a headed browser) needs a logged-on, unlocked desktop (autologon, no screen
lock), so a GUI job refuses to start otherwise, before anything is sent to its service.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from win_automation.definition import StepContext, StepFn, Workflow
from win_automation.errors import Cancelled, DesktopUnavailable, OperationTimeout, WinAutomationError
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import script_text

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 60.0


class DesktopState(BaseModel):
    state: Literal["unlocked", "locked", "no-user"]
    session: int
    user: str | None = None
    logonui: bool
    explorer: bool


def desktop_state(vm: Vm) -> DesktopState:
    """What the probe finds on the VM; WinAutomationError when it cannot tell."""
    result = vm.powershell(
        script_text("Get-DesktopState"), timeout=PROBE_TIMEOUT, display="Get-DesktopState", live=False
    )
    if result.cancelled:
        raise Cancelled("cancelled while probing the VM desktop")
    if result.timed_out:
        raise OperationTimeout(f"the VM desktop probe did not answer within {PROBE_TIMEOUT:g}s")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.exit_code != 0 or not lines:
        why = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}, no output"])[0]
        raise WinAutomationError(f"the VM desktop probe failed: {why}")
    try:
        return DesktopState.model_validate(json.loads(lines[-1]))
    except (ValueError, ValidationError):
        raise WinAutomationError(
            f"the VM desktop probe answered something else than its JSON line: {lines[-1][:200]!r}"
        ) from None


def require_desktop(vm: Vm) -> None:
    """Return when the VM's desktop is logged on and unlocked; DesktopUnavailable otherwise."""
    found = desktop_state(vm)
    log.info(
        "desktop probed",
        extra={"op": "desktop", "vm": vm.key, "state": found.state, "session": found.session},
    )
    if found.state == "no-user":
        raise DesktopUnavailable(
            f"nobody is logged on to the VM {vm.key} (no explorer.exe in console session "
            f"{found.session}): log on, or set up autologon, before a GUI job"
        )
    if found.state == "locked":
        raise DesktopUnavailable(
            f"the VM desktop is locked (LogonUI.exe in console session {found.session} of "
            f"{found.user or 'its user'} on {vm.key}): unlock it; GUI jobs need no screen lock"
        )


def headed_twin(workflow: Workflow, *, description: str) -> Workflow:
    """The GUI twin of `workflow` (`<name>-headed`, gui=True): its first steps (those with no
    parents) probe the desktop before they run, so a locked or empty desktop refuses the job."""

    def guarded(fn: StepFn) -> StepFn:
        def step(inp: Any, ctx: StepContext) -> BaseModel:
            require_desktop(ctx.vm)
            return fn(inp, ctx)

        return step

    steps = tuple(s if s.parents else replace(s, fn=guarded(s.fn)) for s in workflow.steps)
    return replace(workflow, name=f"{workflow.name}-headed", gui=True, description=description, steps=steps)
