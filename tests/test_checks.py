"""The five health checks against real things on loopback: the test sshd with its powershell.exe
stand-in, Aloha-like and Hatchet health HTTP servers, and listeners that misbehave."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fixture_endpoints import (
    HttpEndpoint,
    RawListener,
    aloha_server_routes,
    closed_port,
    hatchet_health_routes,
)
from fixture_sshd import SshServer

from win_automation.config import Config
from win_automation.errors import UsageError
from win_automation.operations.checks import (
    CHECKS,
    REPAIRS,
    check_aloha_client,
    check_aloha_server,
    check_hatchet,
    check_ssh,
    failpoints,
    run_checks,
)


def token(**claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    body = {"sub": "tenant", "server_url": "http://127.0.0.1:1", "grpc_broadcast_address": "127.0.0.1:1"}
    return f"{part({'alg': 'none'})}.{part({**body, **claims})}.sig"


def config(**sections: Any) -> Config:
    return Config(**{"supervisor": {"check_timeout": 1.0}, **sections})


def test_aloha_server_pass_and_every_failure_has_its_cause(endpoints: list) -> None:
    good = HttpEndpoint(aloha_server_routes())
    busy = HttpEndpoint({"/": (503, "Service Unavailable")})
    other = HttpEndpoint({"/": (200, "<html>nginx welcome</html>")})
    client_like = HttpEndpoint({})  # the Aloha client: GET / is 404
    closing, silent = RawListener("close"), RawListener("silent")
    endpoints += [good, busy, other, client_like, closing, silent]

    def check(url: str) -> Any:
        return check_aloha_server(config(aloha={"server_url": url}), 0.5)

    passed = check(good.url)
    assert passed.status == "pass" and passed.latency_ms > 0
    failed = check(busy.url)
    assert failed.status == "fail" and "HTTP 503" in failed.cause and failed.repair
    wrong = check(other.url)
    assert wrong.kind == "wrong_service" and "another service" in wrong.cause
    swapped = check(client_like.url)
    assert "swapped" in swapped.cause and "7887" in swapped.fix
    closed = check(closing.url)
    # both QEMU causes, and the command to check each, and the PowerShell that fixes the firewall
    assert "nothing listens on port" in closed.cause and "guest firewall rejects" in closed.cause
    assert "Get-NetTCPConnection -State Listen -LocalPort" in closed.fix
    assert "Get-NetFirewallRule -Name WinAutomation-AlohaServer" in closed.fix
    assert (
        "New-NetFirewallRule -Name WinAutomation-AlohaServer" in closed.fix and "-Profile Any" in closed.fix
    )
    refused = check(f"http://127.0.0.1:{closed_port()}")
    assert refused.kind == "refused" and "does not forward" in refused.cause and "hostfwd" in refused.fix
    hung = check(silent.url)
    assert hung.kind == "silent" and "hangs" in hung.cause
    assert check("http://no-such-host.invalid:7887").kind == "dns"


def test_aloha_client_passes_on_any_http_answer_and_is_never_sent_stop(endpoints: list) -> None:
    client = HttpEndpoint({})  # no GET route: 404, as the real client
    endpoints.append(client)
    result = check_aloha_client(config(aloha={"client_url": client.url}), 1.0)
    assert result.status == "pass"
    assert client.requests == [("GET", "/")]
    down = check_aloha_client(config(aloha={"client_url": f"http://127.0.0.1:{closed_port()}"}), 1.0)
    assert down.status == "fail" and down.repair and "aloha.client_start_cmd" in down.repair


def _hatchet(health: HttpEndpoint, grpc_port: int, **claims: Any) -> Config:
    return config(
        hatchet={
            "token": token(**claims),
            "health_live_url": health.url + "/live",
            "health_ready_url": health.url + "/ready",
            "host_port": f"127.0.0.1:{grpc_port}",
        }
    )


def test_hatchet_health_grpc_and_version(endpoints: list) -> None:
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    health = HttpEndpoint(hatchet_health_routes("v0.80.0"))
    endpoints.append(health)
    try:
        assert check_hatchet(config(), 1.0).status == "skipped"
        ok = check_hatchet(_hatchet(health, grpc_port), 1.0)
        assert ok.status == "pass" and "v0.80.0" in ok.detail
        health.routes["/version"] = (200, json.dumps({"version": "v0.78.22"}))
        old = check_hatchet(_hatchet(health, grpc_port), 1.0)
        assert old.status == "fail" and "v0.78.23" in old.cause and "upgrade" in old.fix
        health.routes["/version"] = (200, "v0.78.23")
        assert check_hatchet(_hatchet(health, grpc_port), 1.0).status == "pass"
        not_grpc = check_hatchet(_hatchet(health, health.port), 1.0)  # HTTP/1 where gRPC should be
        assert not_grpc.status == "fail" and "gRPC" in not_grpc.cause and not_grpc.kind == "wrong_service"
        no_grpc = check_hatchet(_hatchet(health, closed_port()), 1.0)
        assert no_grpc.kind == "refused"
        health.routes["/ready"] = (503, "not ready")
        unready = check_hatchet(_hatchet(health, grpc_port), 1.0)
        assert unready.status == "fail" and unready.cause.startswith("readiness")
    finally:
        server.stop(0)


def test_ssh_check_pass_unknown_key_and_refused(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    ok = check_ssh(config(ssh=live_sshd.settings(known_hosts)), 5.0)
    assert ok.status == "pass" and ok.data["vm_utc"]
    unknown = check_ssh(config(ssh=live_sshd.settings(tmp_path / "empty_known_hosts")), 5.0)
    assert unknown.status == "fail" and "unknown host key" in unknown.cause and "ssh trust" in unknown.fix
    refused = config(ssh=live_sshd.settings(known_hosts, port=closed_port()))
    results = {r.name: r for r in run_checks(refused, forced=frozenset())}
    assert results["ssh"].kind == "refused"
    for name in ("aloha_server", "aloha_client", "playwright"):  # the VM is not there: skipped, with why
        assert results[name].status == "skipped" and "fix ssh first" in results[name].detail
    assert results["hatchet"].status == "skipped"
    assert [r.name for r in run_checks(refused)] == list(CHECKS)


def test_failpoints() -> None:
    assert failpoints({"WIN_AUTOMATION_SUPERVISOR_FAILPOINT": "aloha_server, playwright"}) == {
        "aloha_server",
        "playwright",
    }
    assert failpoints({}) == frozenset()
    with pytest.raises(UsageError, match="unknown check nope"):
        failpoints({"WIN_AUTOMATION_SUPERVISOR_FAILPOINT": "aloha_server,nope"})
    forced = run_checks(config(), ("aloha_server",), frozenset({"aloha_server"}))
    assert forced[0].status == "fail" and forced[0].kind == "failpoint"


def test_playwright_check_and_versions_against_a_real_server(pw_server: Any, tmp_path: Path) -> None:
    from win_automation.operations.checks import run_check
    from win_automation.operations.doctor import check_playwright_version

    cfg = pw_server.config(tmp_path)
    result = run_check("playwright", cfg)
    assert result.status == "pass", result
    client, server = str(result.data["client"]), str(result.data["server"])
    assert client.split(".")[:2] == server.split(".")[:2]
    assert check_playwright_version(result).status == "pass"
    wrong = pw_server.config(tmp_path, ws_path="not-the-ws-path")
    refused = run_check("playwright", wrong)
    # a setting to correct: starting the server's task would not change the answer
    assert refused.status == "fail" and "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH" in refused.fix
    assert refused.repair is None
    unset = run_check("playwright", pw_server.config(tmp_path, ws_path=""))
    assert unset.status == "fail" and unset.repair is None and "ws_path is not set" in unset.cause
    down = run_check("playwright", pw_server.config(tmp_path, port=9))  # nothing listens there
    assert down.status == "fail" and down.repair == REPAIRS["playwright"]  # not answering: its task starts
    mismatch = check_playwright_version(
        type(result)("playwright", "fail", "", data={"client": "1.65.0", "server": "1.64.2"})
    )
    assert mismatch.status == "fail" and "playwright install" in mismatch.fix


def test_an_unusable_version_answer_fails_the_hatchet_check_and_the_pass_goes_on(endpoints: list) -> None:
    """/version answering 1500 nested arrays (2 KiB read of them), or JSON with no version string:
    the hatchet check fails naming it; the other checks still run; doctor's hatchet_version says so."""
    from concurrent import futures

    import grpc

    from win_automation.operations.doctor import check_hatchet_version

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    health = HttpEndpoint(hatchet_health_routes())
    endpoints.append(health)
    try:
        health.routes["/version"] = (200, "[" * 1500 + "]" * 1500)
        cfg = _hatchet(health, grpc_port).model_copy(
            update={"ssh": Config().ssh.model_copy(update={"host": "127.0.0.1", "port": closed_port()})}
        )
        results = run_checks(cfg)
        assert [r.name for r in results] == list(CHECKS) and results[0].kind == "refused"
        hatchet = results[3]
        assert hatchet.status == "fail" and hatchet.kind == "version"
        assert "/version is unusable JSON: nested more than 200 levels deep" in hatchet.cause
        version = check_hatchet_version(cfg)
        assert version.status == "skipped" and "/version gave no version (HTTP 200, but" in version.detail
        health.routes["/version"] = (200, json.dumps({"version": 80}))
        assert "/version holds no version string" in check_hatchet(cfg, 1.0).cause
    finally:
        server.stop(0)


def test_a_check_that_raises_fails_itself_and_the_pass_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the project's own errors were caught: any other fault of one check (a bug, an answer
    no parser expected) stopped the whole supervisor pass, with an empty checks table."""
    from win_automation.operations import checks

    def broken(config: Config, timeout: float) -> checks.CheckResult:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(checks.CHECK_FUNCTIONS, "hatchet", broken)
    cfg = Config().model_copy(
        update={"ssh": Config().ssh.model_copy(update={"host": "127.0.0.1", "port": closed_port()})}
    )
    results = {r.name: r for r in run_checks(cfg)}
    assert list(results) == list(CHECKS) and results["ssh"].kind == "refused"
    hatchet = results["hatchet"]
    assert (hatchet.status, hatchet.detail, hatchet.cause) == ("fail", "RuntimeError", "RuntimeError: boom")
