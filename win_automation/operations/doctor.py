"""`doctor`: everything a broken set-up can be, each with its cause and the exact fix. Changes nothing.

Items, in the order shown: config, folders, ssh, ssh_key, clock, aloha_server, aloha_client,
hatchet, hatchet_token, hatchet_version, playwright, playwright_version, vm (QEMU's run state
through QMP, operations.qemu.check; skipped without vm.qmp_socket). The five health checks
are operations.checks' own; the rest look at the local set-up. Probes run concurrently, each in a
daemon thread, and doctor waits for them no longer than `supervisor.check_timeout` plus a margin:
with every endpoint unresponsive it ends within the longest single timeout + 1 s, and a probe
still running then is reported as not answering. `warn` never fails the run.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from win_automation.config import Config, LoadedConfig
from win_automation.errors import ConfigError, WinAutomationError
from win_automation.jobs.storage import journal_problem
from win_automation.operations import qemu
from win_automation.operations.checks import (
    CheckResult,
    engine_version,
    run_check,
    skipped_because,
)
from win_automation.regularfiles import NotRegularFile, require_regular
from win_automation.versions import MIN_HATCHET_ENGINE, parse_semver, show

ITEMS = (
    "config",
    "folders",
    "ssh",
    "ssh_key",
    "clock",
    "aloha_server",
    "aloha_client",
    "hatchet",
    "hatchet_token",
    "hatchet_version",
    "playwright",
    "playwright_version",
    "vm",
)
MARGIN = 0.5
TOKEN_WARN_DAYS = 14
CLOCK_WARN_SECONDS = 5.0
CLOCK_FAIL_SECONDS = 300.0
FREE_WARN_BYTES = 1 << 30
FREE_FAIL_BYTES = 100 << 20
SECRETS = ("ssh.password", "ssh.key_passphrase", "hatchet.token", "playwright.ws_path")


def check_config(loaded: LoadedConfig) -> CheckResult:
    changed = sorted(path for path, source in loaded.sources.items() if source == "env")
    from_file = sorted(path for path, source in loaded.sources.items() if source == "file")
    cfg = loaded.config
    present = [p for p in SECRETS if getattr(getattr(cfg, p.split(".")[0]), p.split(".")[1]) is not None]
    where = f"file {loaded.file} ({len(from_file)} settings)" if loaded.file else "no config file"
    detail = (
        f"{where}; environment sets {len(changed)}; secrets present: {', '.join(present) or 'none'}"
        f" (missing: {', '.join(p for p in SECRETS if p not in present) or 'none'})"
    )
    return CheckResult("config", "pass", detail)


def _free_and_writable(path: Path) -> tuple[Path, bool, int]:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing, os.access(existing, os.W_OK | os.X_OK), shutil.disk_usage(existing).free


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_folders(config: Config) -> CheckResult:
    problems: list[str] = []
    warnings: list[str] = []
    details: list[str] = []
    for setting, path in (("data.dir", config.data.dir), ("artifacts.out_dir", config.artifacts.out_dir)):
        existing, writable, free = _free_and_writable(path.absolute())
        gib = free / (1 << 30)
        details.append(f"{setting} {path} ({gib:.1f} GiB free)")
        if existing.exists() and not existing.is_dir():
            problems.append(f"{setting}: {existing} is a file, not a folder")
        elif not writable and _read_only(existing):
            problems.append(f"{setting}: {existing} is on a read-only file system")
        elif not writable:
            problems.append(f"{setting}: {existing} is not writable by this user")
        elif free < FREE_FAIL_BYTES:
            problems.append(f"{setting}: only {free >> 20} MiB free on {existing}")
        elif free < FREE_WARN_BYTES:
            warnings.append(f"{setting}: {gib:.2f} GiB free on {existing}")
    if config.data.dir.is_dir() and (journal := journal_problem(config.data.dir)) is not None:
        # the journal's own message says what to do (move the file aside, free space)
        return CheckResult("folders", "fail", "; ".join(details), journal, "as the cause says")
    if problems:
        return CheckResult(
            "folders",
            "fail",
            "; ".join(details),
            "; ".join(problems),
            "choose writable folders with free space (WIN_AUTOMATION_DATA_DIR, WIN_AUTOMATION_ARTIFACT_OUT)"
            " or fix their permissions",
        )
    if warnings:
        return CheckResult(
            "folders",
            "warn",
            "; ".join(details),
            "; ".join(warnings),
            "free space, or prune artifacts (`win-automation artifacts prune`)",
        )
    return CheckResult("folders", "pass", "; ".join(details))


def check_ssh_key(config: Config) -> CheckResult:
    cfg = config.ssh
    if cfg.key_file is None:
        if cfg.use_agent and os.environ.get("SSH_AUTH_SOCK"):
            return CheckResult("ssh_key", "pass", "keys from the SSH agent")
        if cfg.password is not None:
            return CheckResult("ssh_key", "pass", "password login (WIN_AUTOMATION_SSH_PASSWORD)")
        return CheckResult(
            "ssh_key",
            "fail",
            "no credentials",
            "no ssh.key_file, no SSH agent, no password",
            "set ssh.key_file (e.g. ~/.ssh/id_ed25519) or start ssh-agent",
        )
    try:
        mode = stat.S_IMODE(require_regular(cfg.key_file).st_mode)  # a FIFO or device: not a key
    except OSError as exc:
        return CheckResult(
            "ssh_key",
            "fail",
            str(cfg.key_file),
            f"ssh.key_file: {cfg.key_file} is {exc.strerror}"
            if isinstance(exc, NotRegularFile)
            else f"ssh.key_file: {exc.strerror}",
            "point ssh.key_file at your private key",
        )
    if mode & 0o077:
        return CheckResult(
            "ssh_key",
            "fail",
            f"{cfg.key_file} mode {mode:04o}",
            f"ssh.key_file {cfg.key_file} can be read by other users (mode {mode:04o})",
            f"chmod 600 {cfg.key_file}",
        )
    from win_automation.adapters.ssh_connect import load_key

    try:  # it must load: a file this user cannot read, a DSA key, a broken certificate...
        load_key(cfg)
    except WinAutomationError as exc:
        return CheckResult("ssh_key", "fail", str(cfg.key_file), str(exc), "as the cause says")
    return CheckResult("ssh_key", "pass", f"{cfg.key_file} (mode {mode:04o})")


def check_clock(ssh: CheckResult) -> CheckResult:
    vm_text = ssh.data.get("vm_utc")
    if ssh.status != "pass" or not isinstance(vm_text, str):
        why = "the ssh check failed" if ssh.status != "pass" else "the VM did not print its time"
        return CheckResult("clock", "skipped", why)
    vm = datetime.fromisoformat(vm_text.replace("Z", "+00:00"))
    vm = vm if vm.tzinfo else vm.replace(tzinfo=UTC)
    asked, answered = float(ssh.data["asked"]), float(ssh.data["answered"])  # type: ignore[arg-type]
    skew = vm.timestamp() - (asked + answered) / 2
    slack = (answered - asked) / 2
    detail = f"VM clock {skew:+.1f}s from this host's (±{slack:.1f}s)"
    if abs(skew) - slack > CLOCK_FAIL_SECONDS:
        return CheckResult(
            "clock",
            "fail",
            detail,
            f"the VM's clock is {skew:+.0f}s off",
            "on the VM: `w32tm /resync` (and check the time zone); on the host: timedatectl",
        )
    if abs(skew) - slack > CLOCK_WARN_SECONDS:
        return CheckResult(
            "clock", "warn", detail, "the clocks differ by more than 5 s", "on the VM: `w32tm /resync`"
        )
    return CheckResult("clock", "pass", detail)


def check_hatchet_token(config: Config, now: float) -> CheckResult:
    from win_automation.config.hatchet_token import token_claims

    if config.hatchet.token is None:
        return CheckResult("hatchet_token", "skipped", "no hatchet.token: the local engine runs jobs")
    try:
        claims = token_claims(config)
    except ConfigError as exc:
        return CheckResult(
            "hatchet_token",
            "fail",
            "malformed",
            str(exc),
            "create a token with `hatchet-admin token create` and set HATCHET_CLIENT_TOKEN",
        )
    if claims.expires_at is None:
        return CheckResult("hatchet_token", "pass", f"tenant {claims.tenant_id}, no expiry claim")
    when = datetime.fromtimestamp(claims.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    days = (claims.expires_at - now) / 86400
    renew = "create a new one with `hatchet-admin token create` and set HATCHET_CLIENT_TOKEN"
    if days <= 0:
        return CheckResult("hatchet_token", "fail", f"expired {when}", f"the token expired on {when}", renew)
    if days < TOKEN_WARN_DAYS:
        return CheckResult(
            "hatchet_token",
            "warn",
            f"expires {when} ({days:.0f} days)",
            f"the token expires in {days:.1f} days",
            renew,
        )
    return CheckResult(
        "hatchet_token", "pass", f"tenant {claims.tenant_id}, expires {when} ({days:.0f} days)"
    )


def check_hatchet_version(config: Config) -> CheckResult:
    if config.hatchet.token is None:
        return CheckResult("hatchet_version", "skipped", "Hatchet not configured")
    try:
        sdk = metadata.version("hatchet-sdk")
    except metadata.PackageNotFoundError:
        sdk = "not installed"
    version, probe = engine_version(config, config.supervisor.check_timeout)
    if version is None:
        why = "gave no version" if probe.ok else "did not answer"
        return CheckResult("hatchet_version", "skipped", f"the engine's /version {why} ({probe.detail})")
    parsed = parse_semver(version)
    detail = f"hatchet-sdk {sdk}, engine {version} (the SDK needs {show(MIN_HATCHET_ENGINE)} or newer)"
    if parsed is None or parsed < MIN_HATCHET_ENGINE:
        return CheckResult(
            "hatchet_version",
            "fail",
            detail,
            f"the engine {version} is older than the SDK needs",
            "upgrade hatchet-lite (README, Hatchet)",
        )
    return CheckResult("hatchet_version", "pass", detail)


def check_playwright_version(playwright: CheckResult) -> CheckResult:
    client, server = playwright.data.get("client"), playwright.data.get("server")
    if not isinstance(client, str) or not isinstance(server, str):
        return CheckResult(
            "playwright_version", "skipped", "the server's version is not known (see playwright)"
        )
    detail = f"client {client}, server {server}"
    if client.split(".")[:2] != server.split(".")[:2]:
        return CheckResult(
            "playwright_version",
            "fail",
            detail,
            "client and server must share major.minor",
            "reinstall the server at the client's version: `win-automation playwright install`",
        )
    return CheckResult("playwright_version", "pass", detail)


Task = Callable[[], Iterable[CheckResult]]


def _tasks(config: Config, loaded: LoadedConfig) -> dict[tuple[str, ...], Task]:
    def ssh() -> Iterator[CheckResult]:  # each result kept as it comes: a raise names the next item
        result = run_check("ssh", config)
        yield result
        yield check_clock(result)

    def playwright() -> Iterator[CheckResult]:
        result = run_check("playwright", config)
        yield result
        yield check_playwright_version(result)

    return {
        ("config",): lambda: [check_config(loaded)],
        ("folders",): lambda: [check_folders(config)],
        ("ssh", "clock"): ssh,
        ("ssh_key",): lambda: [check_ssh_key(config)],
        ("aloha_server",): lambda: [run_check("aloha_server", config)],
        ("aloha_client",): lambda: [run_check("aloha_client", config)],
        ("hatchet",): lambda: [run_check("hatchet", config)],
        ("hatchet_token",): lambda: [check_hatchet_token(config, time.time())],
        ("hatchet_version",): lambda: [check_hatchet_version(config)],
        ("playwright", "playwright_version"): playwright,
        ("vm",): lambda: [qemu.check(config, config.supervisor.check_timeout)],
    }


def diagnose(loaded: LoadedConfig, only: tuple[str, ...] = ()) -> list[CheckResult]:
    """Every item (or those in `only`), run concurrently, within check_timeout + MARGIN."""
    config = loaded.config
    timeout = config.supervisor.check_timeout
    wanted = set(only or ITEMS)
    found: dict[str, CheckResult] = {}
    threads: list[tuple[tuple[str, ...], threading.Thread]] = []
    for names, task in _tasks(config, loaded).items():
        if not wanted.intersection(names):
            continue

        def work(task: Task = task, names: tuple[str, ...] = names) -> None:
            started = time.monotonic()
            try:
                for result in task():
                    found[result.name] = result
            except Exception as exc:  # a probe's bug must not hide the other results, nor pass for a hang
                name = next((n for n in names if n not in found), None)  # the item whose check raised
                if name is None:  # already reported as not answering
                    return
                why = (str(exc).splitlines() or [""])[0] or type(exc).__name__
                ms = round((time.monotonic() - started) * 1000, 2)
                kind = type(exc).__name__
                found[name] = CheckResult(name, "fail", kind, f"{name}: {why}", "report this", ms)
                for rest in names[names.index(name) + 1 :]:
                    found[rest] = CheckResult(rest, "skipped", f"the {name} check failed")

        thread = threading.Thread(target=work, daemon=True, name=f"doctor-{names[0]}")
        thread.start()
        threads.append((names, thread))
    deadline = time.monotonic() + timeout + MARGIN
    for names, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        for name in names:
            if name not in found:
                found[name] = CheckResult(
                    name,
                    "fail",
                    "no answer",
                    f"no answer within {timeout:g}s (supervisor.check_timeout)",
                    "see the other items; the service or the VM hangs",
                    timeout * 1000,
                )
    ssh = found.get("ssh")
    for name in ("aloha_server", "aloha_client", "playwright"):
        reason = skipped_because(ssh, name)
        if reason and name in found:
            found[name] = CheckResult(name, "skipped", reason)
    return [found[name] for name in ITEMS if name in found and name in wanted]


def probes_running() -> int:
    """Probe threads still running after `diagnose` gave up on them (the CLI then exits at once:
    a thread inside the Playwright driver or paramiko must not hold up, or crash, the exit)."""
    return sum(t.name.startswith("doctor-") and t.is_alive() for t in threading.enumerate())


def summary(results: list[CheckResult]) -> dict[str, object]:
    counts = {
        status: sum(r.status == status for r in results) for status in ("pass", "fail", "warn", "skipped")
    }
    repairs = [f"{r.name} ({r.repair})" for r in results if r.status == "fail" and r.repair]
    return {**counts, "ok": counts["fail"] == 0, "supervisor_would_repair": repairs}
