"""The health checks `doctor` and the supervisor share, in their order: ssh, aloha_server,
aloha_client, hatchet, playwright.

Each check returns a `CheckResult`: `pass | fail | skipped | warn`, the cause, the exact fix, its
latency and `repair` (what `supervisor run --once` would do about it, or None: a person must).
A VM service check (aloha_server, aloha_client, playwright) is `skipped` when the VM does not even
answer on SSH's port, with that as the reason; Hatchet is `skipped` when no token is configured.
`WIN_AUTOMATION_SUPERVISOR_FAILPOINT=aloha_server,playwright` makes those checks fail without
touching the network (rehearsals, tests).

Causes come from win_automation.adapters.probe, which tells apart a name that does not resolve,
a refusal, a drop, a connection closed at once with no bytes (a QEMU user-mode forward with
nothing listening in the guest, or the guest firewall rejecting), a hang, TLS, a wrong service
and an HTTP error status. Nothing here retries or changes anything.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from win_automation import jsontext
from win_automation.adapters.probe import Probe, probe_http, probe_tcp
from win_automation.config import Config
from win_automation.errors import ConfigError, UsageError, WinAutomationError
from win_automation.operations.endpoints import service_url
from win_automation.operations.probe_causes import explain
from win_automation.versions import MIN_HATCHET_ENGINE, parse_semver, show

Status = Literal["pass", "fail", "skipped", "warn"]
CHECKS = ("ssh", "aloha_server", "aloha_client", "hatchet", "playwright")
VM_SERVICES = ("aloha_server", "aloha_client", "playwright")
FAILPOINT_ENV = "WIN_AUTOMATION_SUPERVISOR_FAILPOINT"
ALOHA_OK = "Aloha API server is running"
REPAIRS = {
    "aloha_server": "firewall rules, then aloha.server_start_cmd",
    "aloha_client": "firewall rules, then aloha.client_start_cmd",
    "playwright": "firewall rules, then Start-ScheduledTask WinAutomation-Playwright",
}


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str
    cause: str = ""
    fix: str = ""
    latency_ms: float = 0.0
    repair: str | None = None
    kind: str = ""  # the probe's verdict (refused, closed, ...) when a probe failed
    data: dict[str, object] = field(default_factory=dict)  # facts for doctor (the VM's clock)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def failpoints(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The checks forced to fail; UsageError (exit 2) naming an unknown one."""
    raw = (environ if environ is not None else os.environ).get(FAILPOINT_ENV, "")
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise UsageError(f"{FAILPOINT_ENV}: unknown check {', '.join(unknown)} (known: {', '.join(CHECKS)})")
    return names


def _failed(name: str, probe: Probe, config: Config, service: str, setting: str) -> CheckResult:
    cause, fix = explain(probe, config, name, service, setting)
    return CheckResult(
        name, "fail", probe.detail, cause, fix, probe.latency_ms, REPAIRS.get(name), probe.kind
    )


# ---- the checks ---------------------------------------------------------------------------------


def check_ssh(config: Config, timeout: float) -> CheckResult:
    from win_automation.adapters.ssh import SshConnection
    from win_automation.operations.ssh import run_powershell
    from win_automation.operations.winscripts import script_text

    cfg = config.ssh
    started = time.perf_counter()
    probe = probe_tcp(cfg.host, cfg.port, timeout)
    if not probe.ok:
        return _failed("ssh", probe, config, "the VM's OpenSSH server", "ssh.host / ssh.port")
    conn = SshConnection(cfg.model_copy(update={"connect_timeout": timeout}))
    try:
        conn.connect_now()
        left = max(0.5, timeout - (time.perf_counter() - started))
        asked = time.time()
        result = run_powershell(
            conn, script_text("Get-HealthInfo"), remote_os=cfg.remote_os, timeout=left, display="health"
        )
        answered = time.time()
    except WinAutomationError as exc:
        return CheckResult("ssh", "fail", type(exc).__name__, str(exc), _ssh_fix(exc), _since(started))
    finally:
        conn.close()
    if not result.ok:
        why = "timed out" if result.timed_out else f"exited {result.exit_code}"
        return CheckResult(
            "ssh",
            "fail",
            f"powershell.exe {why}",
            f"powershell.exe {why}: {result.stderr.strip()[:300]}",
            "check the VM's OpenSSH DefaultShell and powershell.exe (README, VM set-up)",
            _since(started),
        )
    clock: dict[str, object] = {
        "asked": asked,
        "answered": answered,
        "vm_utc": _last_timestamp(result.stdout),
    }
    return CheckResult(
        "ssh",
        "pass",
        f"{cfg.user}@{cfg.host}:{cfg.port}, powershell.exe answers",
        latency_ms=_since(started),
        data=clock,
    )


def _last_timestamp(text: str) -> str | None:
    """The VM's clock as Get-HealthInfo.ps1 prints it: the last line that is an ISO 8601 time."""
    for line in reversed(text.splitlines()):
        if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?", line.strip()):
            return line.strip()
    return None


def _ssh_fix(exc: WinAutomationError) -> str:
    from win_automation.errors import AuthError, HostKeyError

    if isinstance(exc, HostKeyError):
        return "after checking the fingerprint: `win-automation ssh trust` (or set ssh.host_key_fingerprint)"
    if isinstance(exc, AuthError):
        return (
            "put the public key of ssh.key_file in C:\\ProgramData\\ssh\\administrators_authorized_keys"
            " (only SYSTEM and Administrators may access it), or set WIN_AUTOMATION_SSH_PASSWORD"
        )
    return "check that the VM's sshd runs: `Get-Service sshd` on the VM"


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def check_aloha_server(config: Config, timeout: float) -> CheckResult:
    url = service_url(config, config.aloha.server_url.rstrip("/") + "/")
    probe = probe_http(url, timeout)
    name, service, setting = "aloha_server", "the Aloha server", "aloha.server_url"
    if probe.kind == "http_status" and probe.status == 404:
        return CheckResult(
            name,
            "fail",
            "HTTP 404 for GET /",
            f"{url}: HTTP 404 for GET /: not the Aloha server (the Aloha client answers 404 to GET /:"
            " are the server and client ports swapped?)",
            "correct aloha.server_url (the server listens on 7887, the client on 7888)",
            probe.latency_ms,
            None,
            "wrong_service",
        )
    if not probe.ok:
        return _failed(name, probe, config, service, setting)
    if ALOHA_OK not in probe.body:
        return CheckResult(
            name,
            "fail",
            f"HTTP {probe.status}, not Aloha",
            f"{url}: HTTP {probe.status} but not {ALOHA_OK!r} (answered {probe.body[:80]!r}): another"
            " service holds the port",
            f"correct the port in {setting}",
            probe.latency_ms,
            None,
            "wrong_service",
        )
    return CheckResult(name, "pass", f"{url} {ALOHA_OK}", latency_ms=probe.latency_ms)


def check_aloha_client(config: Config, timeout: float) -> CheckResult:
    # The client has no health route: any HTTP answer means it is up (GET / is 404). Never /stop.
    probe = probe_http(service_url(config, config.aloha.client_url.rstrip("/") + "/"), timeout)
    if probe.ok or probe.kind == "http_status":
        return CheckResult(
            "aloha_client", "pass", f"{probe.target} answers ({probe.detail})", latency_ms=probe.latency_ms
        )
    return _failed("aloha_client", probe, config, "the Aloha client", "aloha.client_url")


def health_base(config: Config) -> str:
    parts = urlsplit(config.hatchet.health_live_url)
    return f"{parts.scheme}://{parts.netloc}"


def engine_version(config: Config, timeout: float) -> tuple[str | None, Probe]:
    """The engine's version from its health port's `/version` (JSON `{"version": ...}` or text);
    None when it did not answer, or its answer holds no version (the probe's detail says why)."""
    probe = probe_http(health_base(config) + "/version", timeout)
    if not probe.ok:
        return None, probe
    body = probe.body.strip()
    if not body.startswith(("{", "[", '"')):  # plain text: the version itself
        return body or None, probe
    try:
        data = jsontext.loads(body)
    except ValueError as exc:
        return None, replace(probe, detail=f"{probe.detail}, but /version is unusable JSON: {exc}")
    version = data.get("version") if isinstance(data, dict) else data
    if not isinstance(version, str) or not version.strip():
        return None, replace(probe, detail=f"{probe.detail}, but /version holds no version string")
    return version.strip(), probe


def check_hatchet(config: Config, timeout: float) -> CheckResult:
    name = "hatchet"
    if config.hatchet.token is None:
        return CheckResult(name, "skipped", "not configured (no hatchet.token): jobs run on the local engine")
    started = time.perf_counter()
    for what, url in (
        ("liveness", config.hatchet.health_live_url),
        ("readiness", config.hatchet.health_ready_url),
    ):
        probe = probe_http(url, timeout)
        if not probe.ok:
            cause, fix = explain(probe, config, name, "the Hatchet engine", "hatchet.health_*_url")
            if probe.kind == "http_status":
                fix = "the engine is up but not " + what.replace("ness", "") + ": look at hatchet-lite's log"
            return CheckResult(
                name,
                "fail",
                f"{what} {probe.detail}",
                f"{what}: {cause}",
                fix,
                _since(started),
                None,
                probe.kind,
            )
    host, _, port = config.hatchet.host_port.rpartition(":")
    grpc = probe_tcp(host, int(port), timeout, speak="http2")
    if not grpc.ok:
        cause, fix = explain(grpc, config, name, "the Hatchet gRPC endpoint", "hatchet.host_port")
        return CheckResult(
            name, "fail", f"gRPC {grpc.detail}", f"gRPC: {cause}", fix, _since(started), None, grpc.kind
        )
    version, probe = engine_version(config, timeout)
    parsed = parse_semver(version or "")
    if parsed is None or parsed < MIN_HATCHET_ENGINE:
        return CheckResult(
            name,
            "fail",
            f"engine {version or 'version unknown'}",
            f"the engine is {version or 'of unknown version'} ({probe.detail}); hatchet-sdk needs"
            f" {show(MIN_HATCHET_ENGINE)} or newer",
            "upgrade hatchet-lite (README, Hatchet)",
            _since(started),
            None,
            "version",
        )
    return CheckResult(
        name,
        "pass",
        f"live, ready, gRPC at {config.hatchet.host_port}, engine {version}",
        latency_ms=_since(started),
    )


def check_playwright(config: Config, timeout: float) -> CheckResult:
    from win_automation.operations import playwright

    started = time.perf_counter()
    health = playwright.health(config, timeout=timeout)
    latency = round(health.connect_ms, 2) if health.connect_ms is not None else _since(started)
    if health.ok:
        return CheckResult(
            "playwright",
            "pass",
            f"{config.playwright.host}:{config.playwright.port} accepts the wsPath, server"
            f" {health.server_version} = client {health.client_version}",
            latency_ms=latency,
            data={"client": health.client_version, "server": health.server_version},
        )
    cause = health.cause or "the Playwright server did not answer"
    # A setting (no wsPath) or a server of another version: starting the task changes neither.
    misconfigured = health.exit_code == ConfigError.exit_code
    return CheckResult(
        "playwright",
        "fail",
        cause.split(":")[0][:80],
        cause,
        health.fix or "",
        latency,
        None if misconfigured else REPAIRS["playwright"],
        "playwright",
        {"client": health.client_version, "server": health.server_version},
    )


CheckFn = Callable[[Config, float], CheckResult]
CHECK_FUNCTIONS: dict[str, CheckFn] = {
    "ssh": check_ssh,
    "aloha_server": check_aloha_server,
    "aloha_client": check_aloha_client,
    "hatchet": check_hatchet,
    "playwright": check_playwright,
}


def run_check(name: str, config: Config, forced: frozenset[str] = frozenset()) -> CheckResult:
    """One check, or its failpoint; an unexpected error is a failure with its message, not a crash."""
    if name in forced:
        return CheckResult(
            name,
            "fail",
            "failpoint",
            f"failpoint {FAILPOINT_ENV} names {name}",
            f"unset {FAILPOINT_ENV}",
            0.0,
            REPAIRS.get(name),
            "failpoint",
        )
    try:
        return CHECK_FUNCTIONS[name](config, config.supervisor.check_timeout)
    except WinAutomationError as exc:
        return CheckResult(
            name, "fail", type(exc).__name__, str(exc), "see the cause", 0.0, REPAIRS.get(name)
        )
    except Exception as exc:  # a fault of the check itself: that check fails, the pass goes on
        said = str(exc).splitlines()[0] if str(exc) else ""
        return CheckResult(
            name,
            "fail",
            type(exc).__name__,
            f"{type(exc).__name__}: {said}",
            "report it",
            0.0,
            REPAIRS.get(name),
        )


def skipped_because(ssh: CheckResult | None, name: str) -> str | None:
    """Why `name` is skipped after the ssh check's result, or None to run it."""
    if (
        name in VM_SERVICES
        and ssh is not None
        and ssh.status == "fail"
        and ssh.kind in ("dns", "refused", "dropped", "closed", "silent", "failpoint")
    ):
        return f"the VM does not answer on SSH ({ssh.detail}): fix ssh first"
    return None


def run_checks(
    config: Config, names: tuple[str, ...] = CHECKS, forced: frozenset[str] = frozenset()
) -> list[CheckResult]:
    """The checks in order; a VM service check is skipped when the VM does not answer on SSH."""
    results: list[CheckResult] = []
    ssh: CheckResult | None = None
    for name in CHECKS:
        if name not in names:
            continue
        reason = skipped_because(ssh, name)
        result = CheckResult(name, "skipped", reason) if reason else run_check(name, config, forced)
        if name == "ssh":
            ssh = result
        results.append(result)
    return results
