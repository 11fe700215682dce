"""What a failed probe of a VM port means, and the exact fix (`explain`, for the checks of
win_automation.operations.checks), with the firewall rule that admits each port (RULES, as
scripts/windows/Set-FirewallRules.ps1 creates them)."""

from __future__ import annotations

from urllib.parse import urlsplit

from win_automation.adapters.probe import Probe
from win_automation.config import Config

RULES = {
    "ssh": "WinAutomation-SSH",
    "aloha_server": "WinAutomation-AlohaServer",
    "aloha_client": "WinAutomation-AlohaClient",
    "playwright": "WinAutomation-Playwright",
}


def _guest_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def firewall_fix(config: Config, check: str) -> str:
    """The PowerShell (elevated, on the VM) that creates the check's firewall rule."""
    address = config.supervisor.firewall_remote_address or "HOST-ADDRESS-AS-THE-VM-SEES-IT"
    return (
        f"on the VM, elevated: New-NetFirewallRule -Name {RULES[check]} -Direction Inbound -Protocol TCP"
        f" -LocalPort {guest_port(config, check)} -RemoteAddress {address} -Action Allow -Profile Any"
        " (scripts/windows/Set-FirewallRules.ps1 does all four idempotently)"
    )


def guest_port(config: Config, check: str) -> int:
    return {
        "ssh": 22,
        "aloha_server": _guest_port(config.aloha.server_url),
        "aloha_client": _guest_port(config.aloha.client_url),
        "playwright": config.playwright.port,
    }[check]


def explain(probe: Probe, config: Config, check: str, service: str, setting: str) -> tuple[str, str]:
    """(cause, fix) for a failed probe of a VM port (`check` names its firewall rule)."""
    target = probe.target
    port = guest_port(config, check) if check in RULES else None
    if probe.kind == "dns":
        return probe.detail, f"correct the host in {setting}"
    if probe.kind == "refused":
        return (
            f"{target}: connection refused: nothing accepts on that port on the host (the VM is not"
            " running, or QEMU/libvirt does not forward the port)",
            f"start the VM; check the port forward (QEMU: hostfwd=tcp:127.0.0.1:HOSTPORT-:{port})"
            if port
            else f"start {service}, or correct {setting}",
        )
    if probe.kind == "dropped":
        return (
            f"{target}: {probe.detail}: a firewall drops the packets, or the host is unreachable",
            f"check the route to the host and the firewalls between; {firewall_fix(config, check)}"
            if check in RULES
            else f"check that {service} runs and that {setting} is right",
        )
    if probe.kind == "closed":
        if check not in RULES:
            return f"{target}: {probe.detail}", f"check that {service} runs and listens on {target}"
        return (
            f"{target}: {probe.detail}. With QEMU user-mode networking that means either nothing listens"
            f" on port {port} in the guest, or the guest firewall rejects the connection",
            f"on the VM check both: `Get-NetTCPConnection -State Listen -LocalPort {port}` (is {service}"
            " running, listening on the guest's network interface, not only 127.0.0.1?) and"
            f" `Get-NetFirewallRule -Name {RULES[check]}` (does a rule admit it?). Fix the firewall: "
            f"{firewall_fix(config, check)}",
        )
    if probe.kind == "silent":
        return f"{target}: {probe.detail}: {service} hangs", f"restart {service}"
    if probe.kind == "tls":
        return (
            f"{target}: {probe.detail}",
            f"use the scheme {service} speaks (http:// or https://) in {setting}",
        )
    if probe.kind in ("wrong_service", "protocol"):
        return f"{target}: {probe.detail}, not {service}", f"correct the port in {setting}"
    return f"{target}: {probe.detail} {probe.body[:200]!r}", f"look at {service}'s log on the VM"
