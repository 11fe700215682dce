"""The supervisor pass as a Hatchet cron workflow: the real `win-automation worker` registers the
schedule from `supervisor.cron` with the fake engine (no change to the worker), and a fired cron
runs the same pass on the worker, against the test sshd and Aloha-like servers on loopback,
recording the breaker and the check results in the worker's journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixture_endpoints import HttpEndpoint, aloha_server_routes
from fixture_hatchet import HatchetWorld
from fixture_sshd import SshServer

from win_automation.config import load_config
from win_automation.operations.supervisor import status

pytestmark = pytest.mark.slow
CRON = "*/5 * * * *"


def test_cron_workflow_registered_and_fired(
    hatchet_world: HatchetWorld, live_sshd: SshServer, endpoints: list
) -> None:
    server, client = HttpEndpoint(aloha_server_routes()), HttpEndpoint({})
    endpoints += [server, client]
    known_hosts = live_sshd.write_known_hosts(hatchet_world.root / "known_hosts")
    env = {
        **live_sshd.env(known_hosts),
        "WIN_AUTOMATION_ALOHA_SERVER_URL": server.url,
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": client.url,
        "WIN_AUTOMATION_SUPERVISOR_CRON": CRON,
        "WIN_AUTOMATION_SUPERVISOR_FAILPOINT": "playwright",
        "WIN_AUTOMATION_SUPERVISOR_CHECK_TIMEOUT": "3s",
        "WIN_AUTOMATION_HATCHET_HEALTH_LIVE_URL": hatchet_world.engine.health_url + "/live",
        "WIN_AUTOMATION_HATCHET_HEALTH_READY_URL": hatchet_world.engine.health_url + "/ready",
    }
    worker = hatchet_world.start_worker("--grace", "10s", name="cron-worker", env=env)
    try:
        engine = hatchet_world.engine
        assert engine.workflows["supervisor-pass"].crons == [CRON]
        assert engine.workflows["ping"].crons == []  # only the workflow that asks for one
        run_id = engine.fire_cron("supervisor-pass")
        run = engine.wait_run(run_id, timeout=60)
        task = run.tasks["pass"]
        # the playwright failpoint fails the pass: a non-retryable failure naming the check
        assert run.status == "FAILED" and task.retry_count == 0
        assert "playwright" in task.error and "failpoint" in task.error
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    config = load_config(None, {**hatchet_world.env, **env}).config
    shown = status(config)
    checks = {c["name"]: c["status"] for c in shown["checks"]}
    assert checks == {
        "ssh": "pass",
        "aloha_server": "pass",
        "aloha_client": "pass",
        "hatchet": "pass",  # the fake engine's health port, its gRPC and its /version
        "playwright": "fail",
    }
    assert shown["breaker"]["consecutive_failures"] == 1
    reports = list(Path(hatchet_world.artifacts).glob("*/report.json"))
    assert reports and json.loads(reports[-1].read_text())["failpoints"] == ["playwright"]
