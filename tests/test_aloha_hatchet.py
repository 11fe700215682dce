"""`aloha run --engine hatchet`: the aloha-task workflow on the real worker process, through the
fake Hatchet engine, against the Aloha stand-ins and the test sshd's desktop probe."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from aloha_standin import AlohaClient, AlohaServer, Fault
from fixture_aloha import aloha_env
from fixture_hatchet import HatchetWorld, WorkerProcess
from fixture_sshd import SshServer

pytestmark = pytest.mark.slow

TASK = "Open Paint and draw a square"


@pytest.fixture(scope="module")
def standins() -> Iterator[tuple[AlohaServer, AlohaClient]]:
    server, client = AlohaServer(stop_after=3), AlohaClient(step_seconds=0.1)
    yield server, client
    client.stop()
    server.stop()


@pytest.fixture(scope="module")
def aloha_worker(
    hatchet_world: HatchetWorld, sshd: SshServer, standins: tuple[AlohaServer, AlohaClient]
) -> Iterator[WorkerProcess]:
    known_hosts = sshd.write_known_hosts(hatchet_world.root / "known_hosts")
    hatchet_world.env.update({**sshd.env(known_hosts), **aloha_env(*standins)})
    worker = hatchet_world.start_worker("--slots", "4", "--grace", "10s", name="aloha-worker")
    yield worker
    code = worker.stop()
    assert code == 0, worker.log()[-3000:]


def test_a_task_runs_on_a_worker_with_the_desktop_concurrency_key(
    hatchet_world: HatchetWorld, aloha_worker: WorkerProcess, standins: tuple[AlohaServer, AlohaClient]
) -> None:
    _, client = standins
    result = hatchet_world.cli("aloha", "run", "--task", TASK, "--engine", "hatchet", "--json")
    assert result.code == 0, result.stderr + aloha_worker.log()[-2000:]
    outcome = json.loads(result.stdout)
    assert outcome["state"] == "succeeded" and outcome["outputs"]["run-task"]["reason"] == "ended"
    assert client.real_tasks()[-1].task == TASK and client.real_tasks()[-1].ended == "stop-action"
    folder = hatchet_world.artifacts / outcome["job_id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["response.json"]
    response = json.loads((folder / "response.json").read_text())
    assert response["exchanges"][2]["route"] == "/run_task"
    definition = hatchet_world.engine.workflows["aloha-task"]
    assert definition.concurrency == [("additional_metadata.vm", 1)]
    assert TASK not in aloha_worker.log()


def test_a_busy_desktop_fails_the_run_with_exit_1(
    hatchet_world: HatchetWorld, aloha_worker: WorkerProcess, standins: tuple[AlohaServer, AlohaClient]
) -> None:
    _, client = standins
    client.faults.append(
        Fault("/run_task", status=409, body='{"status": "error"}', content_type="application/json")
    )
    started = len(client.tasks)
    result = hatchet_world.cli("aloha", "run", "--task", TASK, "--engine", "hatchet")
    assert result.code == 1, result.stderr
    assert "desktop is busy" in result.stderr.splitlines()[-1]
    assert len(client.tasks) == started


def test_jobs_cancel_stops_the_task_on_the_worker(
    hatchet_world: HatchetWorld, aloha_worker: WorkerProcess, standins: tuple[AlohaServer, AlohaClient]
) -> None:
    server, client = standins
    server.stop_after = 1000
    client.step_seconds = 0.3
    before = len(client.real_tasks())
    try:
        queued = hatchet_world.cli(
            "aloha", "run", "--task", TASK, "--engine", "hatchet", "--no-wait", "--json"
        )
        assert queued.code == 0, queued.stderr
        job_id = json.loads(queued.stdout)["job_id"]
        deadline = time.monotonic() + 30
        while len(client.real_tasks()) == before or client.real_tasks()[-1].done.is_set():
            assert time.monotonic() < deadline, aloha_worker.log()[-3000:]
            time.sleep(0.05)
        asked = time.monotonic()
        cancelled = hatchet_world.cli("jobs", "cancel", job_id, "--wait", "20s")
        assert cancelled.code == 0, cancelled.stderr
        assert client.real_tasks()[-1].done.wait(10) and client.real_tasks()[-1].ended == "stopped"
        assert time.monotonic() - asked < 10
    finally:
        server.stop_after, client.step_seconds = 3, 0.1
