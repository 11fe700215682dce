"""What the supervisor does about a failed VM service check, over SSH, and the bounded wait after.

- `ensure_firewall(vm, config)`: scripts/windows/Set-FirewallRules.ps1 with the host's address
  (`supervisor.firewall_remote_address`, else the SSH client's address as the VM sees it) and
  the guest ports; one entry per rule, each
  `created`, `updated` or `unchanged` (a second run changes nothing; rules have fixed -Name ids).
- `start_service(vm, config, check)`: `aloha.server_start_cmd` / `aloha.client_start_cmd` (as
  configured: scheduled tasks in the user's session), or Start-WinAutomationTask.ps1 with the
  task `WinAutomation-Playwright`.
- `wait_for(checks, config, ...)`: run the checks again, together, until each passes or the
  bounded time (`supervisor.remediation_wait`) is up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from win_automation.config import Config
from win_automation.errors import CommandFailed
from win_automation.operations.checks import CheckResult, run_check
from win_automation.operations.probe_causes import guest_port
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import script_text

PLAYWRIGHT_TASK = "WinAutomation-Playwright"
WAIT_POLL = 0.5


def firewall_args(config: Config) -> tuple[str, ...]:
    return (
        config.supervisor.firewall_remote_address or "ssh-client",
        *(str(guest_port(config, check)) for check in ("ssh", "aloha_server", "aloha_client", "playwright")),
    )


def ensure_firewall(vm: Vm, config: Config) -> list[dict[str, object]]:
    """Create or update the four inbound rules; what happened to each."""
    result = vm.powershell(
        script_text("Set-FirewallRules"), args=firewall_args(config), display="Set-FirewallRules", live=False
    )
    if not result.ok:
        raise CommandFailed(
            f"Set-FirewallRules failed (exit {result.exit_code}): {result.stderr.strip()[:300]}",
            result=result,
        )
    rules: list[dict[str, object]] = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "firewall_rule" in entry and "action" in entry:
            rules.append(entry)
    if len(rules) != 4:
        raise CommandFailed(f"Set-FirewallRules reported {len(rules)} rules, not 4", result=result)
    return rules


def start_service(vm: Vm, config: Config, check: str) -> str:
    """Start the service behind `check`; the command sent (for the report)."""
    if check == "playwright":
        result = vm.powershell(
            script_text("Start-WinAutomationTask"),
            args=(PLAYWRIGHT_TASK,),
            display="Start-WinAutomationTask",
            live=False,
        )
        sent = f"Start-ScheduledTask -TaskName {PLAYWRIGHT_TASK}"
    else:
        sent = config.aloha.server_start_cmd if check == "aloha_server" else config.aloha.client_start_cmd
        result = vm.powershell(sent, live=False)
    if not result.ok:
        raise CommandFailed(
            f"{sent!r} failed (exit {result.exit_code}): {result.stderr.strip()[:300]}", result=result
        )
    return sent


def wait_for(
    checks: list[str],
    config: Config,
    forced: frozenset[str],
    *,
    cancelled: Callable[[], bool] = lambda: False,
) -> dict[str, CheckResult]:
    """Check each again, together, until it passes or `supervisor.remediation_wait` is up (a
    failpoint: once): the services started in one pass come up in one wait, not one after the
    other. Each check's last result."""
    deadline = time.monotonic() + config.supervisor.remediation_wait
    last: dict[str, CheckResult] = {}
    pending = list(checks)
    while True:
        for check in pending:
            last[check] = run_check(check, config, forced)
        pending = [c for c in pending if last[c].status != "pass" and c not in forced]
        if not pending or time.monotonic() >= deadline or cancelled():
            return last
        time.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))
