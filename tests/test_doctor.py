"""`doctor`: every item with its cause and fix, concurrent probes bounded by the check timeout,
warnings that do not fail, secrets never shown, nothing changed."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixture_dns import SilentDns
from fixture_endpoints import (
    HttpEndpoint,
    RawListener,
    aloha_server_routes,
    closed_port,
    hatchet_health_routes,
)
from fixture_sshd import SshServer

from win_automation.config import load_config
from win_automation.operations.checks import CheckResult
from win_automation.operations.doctor import check_clock, diagnose

WS_PATH = "wa-secret-ws-path-4242"


def token(expires_in_days: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {
        "sub": "tenant-1",
        "server_url": "http://127.0.0.1:1",
        "grpc_broadcast_address": "127.0.0.1:1",
        "exp": int(time.time() + expires_in_days * 86400),
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


@pytest.fixture
def grpc_port() -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


def test_every_endpoint_hanging_doctor_ends_within_the_timeout_plus_one_second(
    endpoints: list, tmp_path: Path, cli: Any
) -> None:
    silent = RawListener("silent")
    endpoints.append(silent)
    env = {
        "WIN_AUTOMATION_SSH_HOST": "127.0.0.1",
        "WIN_AUTOMATION_SSH_PORT": str(silent.port),
        "WIN_AUTOMATION_ALOHA_SERVER_URL": silent.url,
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": silent.url,
        "WIN_AUTOMATION_HATCHET_HEALTH_LIVE_URL": silent.url + "/live",
        "WIN_AUTOMATION_HATCHET_HEALTH_READY_URL": silent.url + "/ready",
        "HATCHET_CLIENT_HOST_PORT": f"127.0.0.1:{silent.port}",
        "HATCHET_CLIENT_TOKEN": token(90),
        "WIN_AUTOMATION_PLAYWRIGHT_HOST": "127.0.0.1",
        "WIN_AUTOMATION_PLAYWRIGHT_PORT": str(silent.port),
        "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": WS_PATH,
        "WIN_AUTOMATION_SUPERVISOR_CHECK_TIMEOUT": "1.5s",
        "WIN_AUTOMATION_DATA_DIR": str(tmp_path / "data"),
    }
    loaded = load_config(None, env)
    started = time.monotonic()
    results = {r.name: r for r in diagnose(loaded)}
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.0, elapsed
    assert results["ssh"].status == "fail" and results["ssh"].kind == "silent"
    assert results["hatchet"].status == "fail"
    assert results["aloha_server"].status == "skipped"  # the VM does not answer on SSH
    run = cli("doctor", "--json", env=env)
    assert run.code == 1
    data = json.loads(run.stdout)
    assert data["ok"] is False and data["summary"]["fail"] >= 2
    assert WS_PATH not in run.stdout + run.stderr
    assert not (tmp_path / "data").exists()  # doctor changes nothing, not even the data folder


def test_names_whose_dns_server_does_not_answer_doctor_still_ends_within_the_bound(
    silent_dns: SilentDns, cli_env: dict[str, str]
) -> None:
    """Every endpoint named by a host name, and the name server silent (a UDP socket that never
    answers, as the resolver of a mount namespace sees it): the resolver's own wait (10 s per
    name) must not stretch doctor past check_timeout + 1 s."""
    host = "vm.stalled-dns.test"
    env = {
        **cli_env,
        "WIN_AUTOMATION_SSH_HOST": host,
        "WIN_AUTOMATION_ALOHA_SERVER_URL": f"http://{host}:7887",
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": f"http://{host}:7888",
        "WIN_AUTOMATION_HATCHET_HEALTH_LIVE_URL": f"http://{host}:8733/live",
        "WIN_AUTOMATION_HATCHET_HEALTH_READY_URL": f"http://{host}:8733/ready",
        "HATCHET_CLIENT_HOST_PORT": f"{host}:7077",
        "HATCHET_CLIENT_TOKEN": token(90),
        "WIN_AUTOMATION_PLAYWRIGHT_HOST": host,
        "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": WS_PATH,
        "WIN_AUTOMATION_SUPERVISOR_CHECK_TIMEOUT": "1.5s",
    }
    probes = (  # each probe alone (the supervisor's pass runs them one after the other)
        "import time; from win_automation.adapters.probe import probe_http, probe_tcp\n"
        f"for probe in (lambda: probe_tcp({host!r}, 22, 1.0),\n"
        f"              lambda: probe_http('http://{host}:7887/', 1.0)):\n"
        "    t = time.monotonic(); p = probe()\n"
        "    print('probe:', p.kind, round(time.monotonic() - t, 1), p.detail)"
    )
    doctor = f"{sys.executable} -m win_automation doctor --json"
    run = subprocess.run(
        silent_dns.in_namespace(
            f'{sys.executable} -c "$PROBES" >&2 && date +"doctor: %s.%N" >&2 && exec {doctor}'
        ),
        env={**env, "PROBES": probes},
        capture_output=True,
        text=True,
        timeout=60,
    )
    ended = time.time()
    assert run.returncode == 1, run.stderr
    timed = [line.split(maxsplit=3)[1:] for line in run.stderr.splitlines() if line.startswith("probe: ")]
    assert [kind for kind, _, _ in timed] == ["dns", "dns"] and all(float(s) < 1.5 for _, s, _ in timed), (
        run.stderr
    )
    assert all("did not resolve within 1s" in said for _, _, said in timed), run.stderr  # not 0.99985s
    [doctor_started] = [
        float(line.split()[1]) for line in run.stderr.splitlines() if line.startswith("doctor: ")
    ]
    # its start-up (0.5 s; 2 s on a loaded CI machine), then the check timeout and its margin;
    # the resolver's own wait would be 10 s
    assert ended - doctor_started < 3.0 + 1.5 + 1.0, ended - doctor_started
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert checks["ssh"]["status"] == "fail" and "did not resolve within 1.5s" in checks["ssh"]["cause"], (
        checks
    )


def test_healthy_setup_passes_and_a_warning_does_not_fail(
    live_sshd: SshServer, known_hosts: Path, endpoints: list, grpc_port: int, cli: Any, tmp_path: Path
) -> None:
    server, client, health = (
        HttpEndpoint(aloha_server_routes()),
        HttpEndpoint({}),
        HttpEndpoint(hatchet_health_routes()),
    )
    endpoints += [server, client, health]
    env = {
        **live_sshd.env(known_hosts),
        "WIN_AUTOMATION_SSH_PASSWORD": live_sshd.PASSWORD,
        "WIN_AUTOMATION_ALOHA_SERVER_URL": server.url,
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": client.url,
        "WIN_AUTOMATION_HATCHET_HEALTH_LIVE_URL": health.url + "/live",
        "WIN_AUTOMATION_HATCHET_HEALTH_READY_URL": health.url + "/ready",
        "HATCHET_CLIENT_HOST_PORT": f"127.0.0.1:{grpc_port}",
        "HATCHET_CLIENT_TOKEN": token(5),  # expires in 5 days: a warning
    }
    items = [
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
    ]
    args = [arg for item in items for arg in ("--check", item)]
    run = cli("doctor", "--json", *args, env=env)
    data = json.loads(run.stdout)
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses == {**dict.fromkeys(items, "pass"), "hatchet_token": "warn"}, data
    assert run.code == 0 and data["summary"]["warn"] == 1
    token_item = next(c for c in data["checks"] if c["name"] == "hatchet_token")
    assert "expires in" in token_item["cause"] and "hatchet-admin token create" in token_item["fix"]
    config_item = next(c for c in data["checks"] if c["name"] == "config")
    assert "ssh.password" in config_item["detail"].split("(missing")[0]
    version = next(c for c in data["checks"] if c["name"] == "hatchet_version")
    assert "hatchet-sdk 1.43" in version["detail"] and "v0.80.0" in version["detail"]
    table = cli("doctor", *args, env=env)
    assert table.code == 0 and "✓" in table.stdout and "!" in table.stdout
    assert "doctor: 9 passed, 0 failed, 1 warnings, 0 skipped" in table.stdout
    everything = table.stdout + table.stderr + run.stdout + run.stderr
    assert live_sshd.PASSWORD not in everything and env["HATCHET_CLIENT_TOKEN"] not in everything


def test_fixes_named_and_repairs_announced(
    live_sshd: SshServer, known_hosts: Path, cli: Any, tmp_path: Path, endpoints: list
) -> None:
    key = tmp_path / "loose_key"
    key.write_bytes(live_sshd.client_key.read_bytes())
    key.chmod(0o644)
    closing = RawListener("close")
    endpoints.append(closing)
    env = {
        **live_sshd.env(known_hosts, key_file=str(key)),
        "WIN_AUTOMATION_ALOHA_SERVER_URL": closing.url,
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": f"http://127.0.0.1:{closed_port()}",
    }
    seen = len(live_sshd.reports.read_text().splitlines())
    run = cli("doctor", "--check", "ssh_key", "--check", "aloha_server", "--check", "aloha_client", env=env)
    assert run.code == 1
    assert f"chmod 600 {key}" in run.stdout
    assert "New-NetFirewallRule -Name WinAutomation-AlohaServer" in run.stdout
    assert "`win-automation supervisor run --once` would repair: aloha_server" in run.stdout
    assert "aloha_client (firewall rules, then aloha.client_start_cmd)" in run.stdout
    assert len(live_sshd.reports.read_text().splitlines()) == seen  # nothing was sent to the VM


def test_bad_input_and_bad_config(cli: Any) -> None:
    unknown = cli("doctor", "--check", "sshh")
    assert unknown.code == 2 and "--check: unknown item sshh" in unknown.stderr
    bad = cli("doctor", "--json", env={"WIN_AUTOMATION_SSH_PORT": "99999"})
    assert bad.code == 1
    data = json.loads(bad.stdout)
    assert data["checks"][0]["name"] == "config" and "ssh.port" in data["checks"][0]["cause"]
    assert all(c["status"] == "skipped" for c in data["checks"][1:])


def test_clock_skew() -> None:
    now = time.time()

    def ssh(offset: float) -> CheckResult:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + offset)) + ".5000000Z"
        return CheckResult(
            "ssh", "pass", "", data={"asked": now - 0.1, "answered": now + 0.1, "vm_utc": stamp}
        )

    assert check_clock(ssh(0)).status == "pass"
    assert check_clock(ssh(30)).status == "warn"
    late = check_clock(ssh(-3600))
    assert late.status == "fail" and "w32tm /resync" in late.fix
    assert check_clock(CheckResult("ssh", "fail", "")).status == "skipped"


def test_a_check_that_raises_is_its_own_failure_never_a_timeout(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check's bug (here: a VM clock that does not parse, a QMP check that raises) is reported
    under that check's name with its error, at once; the ssh result before it is kept."""
    from win_automation.operations import doctor

    def bad_clock(ssh: CheckResult) -> CheckResult:
        raise ValueError("Invalid isoformat string: '2026-13-45T00:00:00'\nsecond line")

    def bad_vm(config: Any, timeout: float) -> CheckResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_clock", bad_clock)
    monkeypatch.setattr(doctor.qemu, "check", bad_vm)
    env = {**cli_env, "WIN_AUTOMATION_SSH_HOST": "127.0.0.1", "WIN_AUTOMATION_SSH_PORT": str(closed_port())}
    started = time.monotonic()
    results = {r.name: r for r in diagnose(load_config(None, env), ("ssh", "clock", "vm"))}
    assert time.monotonic() - started < 2  # the check timeout is 5 s: nothing waited for it
    assert results["ssh"].kind == "refused"
    clock, vm = results["clock"], results["vm"]
    assert (clock.status, clock.detail) == ("fail", "ValueError")
    assert clock.cause == "clock: Invalid isoformat string: '2026-13-45T00:00:00'"
    assert (vm.status, vm.cause) == ("fail", "vm: boom") and vm.latency_ms < 1000
