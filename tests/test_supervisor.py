"""The supervisor against the test sshd (its powershell.exe stand-in keeps the VM's firewall rules
and reports what each remediation sent) and Aloha-like HTTP servers on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixture_endpoints import HttpEndpoint, aloha_server_routes
from fixture_sshd import SshServer

from win_automation import metrics
from win_automation.config import Config
from win_automation.operations.supervisor import run_pass, status
from win_automation.operations.vm import Vm

START_SERVER = "Start-ScheduledTask -TaskName AlohaServer"
START_CLIENT = "Start-ScheduledTask -TaskName AlohaClient"


def bodies(sshd: SshServer, since: int) -> list[dict[str, Any]]:
    lines = sshd.reports.read_text().splitlines()[since:]
    return [json.loads(line) for line in lines]


@pytest.fixture
def world(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, endpoints: list
) -> Iterator[dict[str, Any]]:
    server = HttpEndpoint(aloha_server_routes())
    client = HttpEndpoint({})
    endpoints += [server, client]
    live_sshd.firewall_file.write_text("")
    settings = {
        "ssh": live_sshd.settings(known_hosts),
        "aloha": {"server_url": server.url, "client_url": client.url, "server_start_cmd": START_SERVER},
        "supervisor": {
            "check_timeout": 2.0,
            "remediation_wait": 3.0,
            "firewall_remote_address": "10.0.2.2",
            "breaker_threshold": 2,
        },
        "data": {"dir": str(tmp_path / "data")},
        "artifacts": {"out_dir": str(tmp_path / "artifacts")},
    }
    yield {"server": server, "client": client, "settings": settings, "sshd": live_sshd}


def starts_server_when_asked(
    sshd: SshServer, server: HttpEndpoint, stop: threading.Event, command: str = START_SERVER
) -> threading.Thread:
    """The scheduled task's part: when the start command arrives at the VM, the server comes up."""
    seen = len(sshd.reports.read_text().splitlines())

    def watch() -> None:
        while not stop.is_set():
            if any(b.get("body", "").strip() == command for b in bodies(sshd, seen)):
                time.sleep(0.3)  # a service takes a moment to listen
                server.up()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_pass_repairs_aloha_and_the_firewall_twice_changes_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sshd, server = world["sshd"], world["server"]
    world["settings"]["supervisor"]["breaker_threshold"] = 5  # three failing passes keep it closed
    config = Config(**world["settings"])
    server.down()
    stop = threading.Event()
    starts_server_when_asked(sshd, server, stop)
    seen = len(sshd.reports.read_text().splitlines())
    metrics.reset()
    report = run_pass(config, vm=Vm(config), owner="test:1", forced=frozenset({"playwright"}))
    stop.set()
    checks = {c.name: c for c in report.checks}
    assert checks["ssh"].status == "pass" and checks["aloha_server"].status == "pass"
    assert checks["playwright"].status == "fail"  # the failpoint: a rehearsal still repairs
    outcomes = {(r["check"], r["action"]): r for r in report.remediations}
    firewall = outcomes[("aloha_server", "firewall")]
    assert [r["action"] for r in firewall["rules"]] == ["created"] * 4
    assert outcomes[("aloha_server", "aloha_server")]["outcome"] == "repaired"
    assert outcomes[("playwright", "playwright")]["outcome"] == "failed"
    sent = bodies(sshd, seen)
    firewall_runs = [b for b in sent if "New-NetFirewallRule" in b.get("body", "")]
    assert len(firewall_runs) == 1  # once per pass, however many checks failed
    assert "} '10.0.2.2' '22' '" in firewall_runs[0]["script"]  # the host's address, then the guest ports
    assert any(b.get("body", "").strip() == START_SERVER for b in sent)
    task = [b for b in sent if "Start-ScheduledTask -TaskName $TaskName" in b.get("body", "")]
    assert task and "'WinAutomation-Playwright'" in task[0]["script"]
    rules = json.loads(sshd.firewall_file.read_text())
    assert sorted(rules) == sorted(
        [
            "WinAutomation-SSH",
            "WinAutomation-AlohaServer",
            "WinAutomation-AlohaClient",
            "WinAutomation-Playwright",
        ]
    )
    assert all(r["Profile"] == "Any" and r["RemoteAddress"] == "10.0.2.2" for r in rules.values())
    counted = metrics.snapshot()
    assert counted["supervisor_check_aloha_server_pass_total"] == 1
    assert counted["supervisor_remediation_firewall_total"] == 1
    assert counted["supervisor_remediation_aloha_server_total"] == 1

    before = sshd.firewall_file.read_text()
    again = run_pass(config, vm=Vm(config), owner="test:1", forced=frozenset({"playwright"}))
    rules_again = next(r for r in again.remediations if r["action"] == "firewall")["rules"]
    assert [r["action"] for r in rules_again] == ["unchanged"] * 4
    assert sshd.firewall_file.read_text() == before  # idempotent: no duplicate, no change

    changed = Config(  # unset: the SSH client's address as the VM sees it (here 127.0.0.1)
        **{
            **world["settings"],
            "supervisor": {**world["settings"]["supervisor"], "firewall_remote_address": None},
        }
    )
    third = run_pass(changed, vm=Vm(changed), owner="test:1", forced=frozenset({"playwright"}))
    rules_third = next(r for r in third.remediations if r["action"] == "firewall")["rules"]
    assert [r["action"] for r in rules_third] == ["updated"] * 4  # Set-NetFirewallRule, not a new rule
    final = json.loads(sshd.firewall_file.read_text())
    assert len(final) == 4 and {r["RemoteAddress"] for r in final.values()} == {"127.0.0.1"}


def test_services_started_in_one_pass_come_up_in_one_wait_and_a_setting_is_not_waited_for(
    world: dict[str, Any],
) -> None:
    """Both Aloha services down: both are started, then waited for together (one
    supervisor.remediation_wait, not one each). Playwright without its wsPath is a setting,
    which starting its task cannot change: said, not started, not waited for."""
    sshd, server, client = world["sshd"], world["server"], world["client"]
    world["settings"]["supervisor"]["remediation_wait"] = 4.0
    world["settings"]["aloha"]["client_start_cmd"] = START_CLIENT
    config = Config(**world["settings"])  # playwright.ws_path unset
    seen = len(sshd.reports.read_text().splitlines())
    for endpoint in (server, client):
        endpoint.down()
    started = time.monotonic()
    report = run_pass(config, vm=Vm(config), owner="test:1")
    took = time.monotonic() - started
    outcomes = {(r["check"], r["action"]): r["outcome"] for r in report.remediations}
    assert (
        outcomes[("aloha_server", "aloha_server")] == outcomes[("aloha_client", "aloha_client")] == "failed"
    )
    assert outcomes[("playwright", None)] == "needs-a-person"
    sent = [b.get("script", "") + b.get("body", "") for b in bodies(sshd, seen)]
    assert any(START_SERVER in text for text in sent) and any(START_CLIENT in text for text in sent)
    assert not any("WinAutomation-Playwright'" in text for text in sent if "Start-ScheduledTask" in text)
    assert 4.0 <= took < 8.0  # one wait; one after the other: 8 s, 12 s with Playwright's

    stop = threading.Event()
    starts_server_when_asked(sshd, server, stop)
    starts_server_when_asked(sshd, client, stop, START_CLIENT)
    again = run_pass(config, vm=Vm(config), owner="test:1")
    stop.set()
    checks = {c.name: c.status for c in again.checks}
    assert checks["aloha_server"] == checks["aloha_client"] == "pass"
    outcomes = {(r["check"], r["action"]): r["outcome"] for r in again.remediations}
    assert (
        outcomes[("aloha_server", "aloha_server")] == outcomes[("aloha_client", "aloha_client")] == "repaired"
    )


def test_ceiling_then_needs_a_person(world: dict[str, Any]) -> None:
    settings = world["settings"]
    settings["supervisor"] = {**settings["supervisor"], "remediation_ceiling": 1, "remediation_wait": 0.3}
    config = Config(**settings)
    world["server"].down()  # and it never comes back
    first = run_pass(config, vm=Vm(config), owner="test:1")
    assert [r["outcome"] for r in first.remediations if r["check"] == "aloha_server"][-1] == "failed"
    second = run_pass(config, vm=Vm(config), owner="test:1")
    entry = next(r for r in second.remediations if r["check"] == "aloha_server")
    assert (
        entry["outcome"] == "needs-a-person"
        and "ceiling" in entry["detail"]
        and "HTTP" not in entry["detail"][:5]
    )
    data = status(config)
    row = next(c for c in data["checks"] if c["name"] == "aloha_server")
    assert row["consecutive_failures"] == 2 and row["remediations"] == 1 and not row["stale"]


def _env(world: dict[str, Any], **extra: str) -> dict[str, str]:
    s = world["settings"]
    env = {
        f"WIN_AUTOMATION_SSH_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in s["ssh"].items()
    }
    env.update(
        {
            "WIN_AUTOMATION_ALOHA_SERVER_URL": s["aloha"]["server_url"],
            "WIN_AUTOMATION_ALOHA_CLIENT_URL": s["aloha"]["client_url"],
            "WIN_AUTOMATION_ALOHA_SERVER_START_CMD": START_SERVER,
            "WIN_AUTOMATION_SUPERVISOR_CHECK_TIMEOUT": "2s",
            "WIN_AUTOMATION_SUPERVISOR_REMEDIATION_WAIT": "0.3s",
            "WIN_AUTOMATION_SUPERVISOR_BREAKER_THRESHOLD": "2",
            "WIN_AUTOMATION_SUPERVISOR_BREAKER_COOLDOWN": "1h",
            "WIN_AUTOMATION_SUPERVISOR_FAILPOINT": "playwright",
        }
    )
    env.update(extra)
    return env


def test_once_exit_codes_breaker_open_and_status(world: dict[str, Any], cli: Any) -> None:
    sshd = world["sshd"]
    env = _env(world, WIN_AUTOMATION_SUPERVISOR_FAILPOINT="aloha_server,playwright")
    first = cli("--debug", "supervisor", "run", "--once", "--json", env=env)
    assert first.code == 1, first.stderr
    # its SSH connection (SFTP channel and all) closed at exit, not by the interpreter's teardown
    assert "Logging error" not in first.stderr and "Traceback" not in first.stderr, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["failpoints"] == ["aloha_server", "playwright"] and report["mode"] == "closed"
    assert "failpoints=aloha_server,playwright" in first.stderr  # logged on every pass
    second = cli("supervisor", "run", "--once", "--json", env=env)
    assert second.code == 1
    assert [(t["from"], t["to"]) for t in json.loads(second.stdout)["transitions"]] == [("closed", "open")]
    seen = len(sshd.reports.read_text().splitlines())
    third = cli("supervisor", "run", "--once", env=env)
    assert third.code == 75, third.stderr
    assert "breaker: open" in third.stdout and "breaker open" in third.stderr
    sent = [b.get("body", "") for b in bodies(sshd, seen)]
    assert not any("New-NetFirewallRule" in b or "Start-ScheduledTask" in b for b in sent)  # nothing repaired
    shown = cli("supervisor", "status", "--json", env=env)
    data = json.loads(shown.stdout)
    assert data["breaker"]["state"] == "open" and data["breaker"]["cooldown_left_seconds"] > 3000
    assert {c["name"]: c["consecutive_failures"] for c in data["checks"]}["aloha_server"] == 3
    stale = cli("supervisor", "status", "--json", env={**env, "WIN_AUTOMATION_SUPERVISOR_INTERVAL": "0.01s"})
    assert all(c["stale"] for c in json.loads(stale.stdout)["checks"])
    table = cli("supervisor", "status", env={**env, "WIN_AUTOMATION_SUPERVISOR_INTERVAL": "0.01s"})
    assert "stale" in table.stdout and "breaker: open" in table.stdout


def test_report_artifact_and_unknown_failpoint(world: dict[str, Any], cli: Any, tmp_path: Path) -> None:
    env = _env(world)
    ok = cli("supervisor", "run", "--once", "--json", env=env)
    report = json.loads(ok.stdout)
    assert ok.code == 1 and report["ok"] is False  # the playwright failpoint
    manifest = json.loads((tmp_path / "artifacts" / report["job_id"] / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["path"].endswith("report.json"))
    saved = json.loads((tmp_path / "artifacts" / report["job_id"] / entry["path"]).read_text())
    assert [c["name"] for c in saved["checks"]] == [
        "ssh",
        "aloha_server",
        "aloha_client",
        "hatchet",
        "playwright",
    ]
    bad = cli("supervisor", "run", "--once", env={**env, "WIN_AUTOMATION_SUPERVISOR_FAILPOINT": "aloha,ssh"})
    assert bad.code == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: WIN_AUTOMATION_SUPERVISOR"
    )
    assert "Traceback" not in bad.stderr


def test_loop_ends_with_zero_on_sigterm_after_its_pass(
    world: dict[str, Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, **_env(world)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "supervisor", "run", "--interval", "0.2s", "--json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["checks"][0]["name"] == "ssh"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for line in out.splitlines():  # every pass printed whole: none was cut by the signal
        assert json.loads(line)["finished_at"] > 0


def test_two_supervisors_never_apply_the_firewall_at_once(world: dict[str, Any]) -> None:
    """Each won the claim of a different service and both ran the firewall script at the same
    moment (whose creates by -Name then race). The firewall has a lock of its own: a pass waits
    for the other's script, then finds its rules unchanged."""
    from win_automation.jobs.locks import vm_lock

    sshd, server = world["sshd"], world["server"]
    config = Config(**world["settings"])
    server.down()
    seen = len(sshd.reports.read_text().splitlines())
    done: list[Any] = []
    with vm_lock(config.data.dir, Vm(config).key, owner="other-supervisor", kind="firewall"):
        passing = threading.Thread(
            target=lambda: done.append(run_pass(config, vm=Vm(config), owner="test:1")), daemon=True
        )
        passing.start()
        time.sleep(2.0)  # the pass has failed its check and reached the firewall by now
        assert not [b for b in bodies(sshd, seen) if "New-NetFirewallRule" in b.get("body", "")]
    passing.join(60)
    (report,) = done
    assert len([b for b in bodies(sshd, seen) if "New-NetFirewallRule" in b.get("body", "")]) == 1
    assert any(r["action"] == "firewall" and r["outcome"] == "applied" for r in report.remediations)
