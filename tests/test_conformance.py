"""Engine conformance: every workflow, run on the local engine and on Hatchet (the fake engine with
a real `win-automation worker` process), leaves the same journal rows and the same exit code.

The workflows are those of `workflows/` and the test ones in tests/conformance_flows.py: parallel
branches with a failing step (its dependents skipped, the independent branch run), a step with
nothing to do, a retried step, a timeout (124 on both engines) and a cancel (130).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aloha_standin import AlohaClient, AlohaServer
from fixture_aloha import aloha_env
from fixture_hatchet import HatchetWorld, WorkerProcess
from fixture_playwright import PlaywrightServer
from fixture_sshd import SshServer

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
ENGINES = ("local", "hatchet")


@pytest.fixture(scope="module")
def aloha_standins() -> Iterator[tuple[AlohaServer, AlohaClient]]:
    server, client = AlohaServer(stop_after=2), AlohaClient(step_seconds=0.05)
    yield server, client
    client.stop()
    server.stop()


@pytest.fixture(scope="module")
def world_env(
    hatchet_world: HatchetWorld,
    sshd: SshServer,
    pw_server: PlaywrightServer,
    aloha_standins: tuple[AlohaServer, AlohaClient],
) -> dict[str, str]:
    known_hosts = sshd.write_known_hosts(hatchet_world.root / "known_hosts")
    env = {
        **sshd.env(known_hosts),
        **pw_server.env(),
        **aloha_env(*aloha_standins),
        # every service the supervisor checks is up: its pass succeeds on both engines
        "WIN_AUTOMATION_HATCHET_HEALTH_LIVE_URL": hatchet_world.engine.health_url + "/live",
        "WIN_AUTOMATION_HATCHET_HEALTH_READY_URL": hatchet_world.engine.health_url + "/ready",
        "WIN_AUTOMATION_WORKFLOW_MODULES": "conformance_flows",
        "PYTHONPATH": os.pathsep.join([hatchet_world.env["PYTHONPATH"], str(TESTS)]),
    }
    hatchet_world.env.update(env)
    return env


@pytest.fixture(scope="module")
def worker(hatchet_world: HatchetWorld, world_env: dict[str, str]) -> Iterator[WorkerProcess]:
    process = hatchet_world.start_worker("--slots", "10", "--grace", "10s")
    yield process
    assert process.stop() == 0, process.log()[-3000:]


def journal(world: HatchetWorld) -> sqlite3.Connection:
    conn = sqlite3.connect(world.data_dir / "journal.sqlite3", timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def record(world: HatchetWorld, job_id: str) -> dict[str, Any]:
    """The journal's view of a job, without times, ids and message texts."""
    conn = journal(world)
    try:
        job = conn.execute("SELECT state, error_code FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        steps = conn.execute(
            "SELECT name, state, attempts, error_code, output_json IS NOT NULL AS has_output"
            " FROM steps WHERE job_id = ? ORDER BY position",
            (job_id,),
        ).fetchall()
    finally:
        conn.close()
    return {"job": tuple(job), "steps": [tuple(s) for s in steps]}


def run(
    world: HatchetWorld, engine: str, workflow: str, payload: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    result = world.cli(
        "run", workflow, "--engine", engine, "--json", "--input", json.dumps(payload), timeout=90
    )
    assert result.stdout, result.stderr
    outcome = json.loads(result.stdout)
    return result.code, record(world, outcome["job_id"])


CASES = {
    "branches": ("conf-branches", {}),
    "timeout": ("conf-timeout", {}),
    "skip": ("conf-skip", {}),
    "ping": ("ping", {"message": "conformance"}),
    "ssh-fails": ("ssh-exec", {"command": "exit 3", "shell": "cmd"}),
    "ssh-skipped": ("ssh-exec", {"command": "echo never", "shell": "cmd", "check": "true"}),
    "ssh-ok": ("ssh-exec", {"command": "echo conformance", "shell": "cmd"}),
    "browser-ok": ("playwright-run", {"script": "def run(page, context, input):\n    return 1\n"}),
    "browser-fails": ("playwright-screenshot", {"url": "http://127.0.0.1:9/", "timeout_seconds": 5}),
    "aloha-ok": ("aloha-task", {"task": "Open Notepad", "max_steps": 5}),
    "supervisor": ("supervisor-pass", {}),
}
# GUI twins of covered workflows (same steps, gui=True): the desktop lock is covered by aloha-task
TWINS = {"playwright-run-headed", "playwright-screenshot-headed"}
EXPECTED_CODES = {
    "branches": 7,
    "timeout": 124,
    "skip": 0,
    "ping": 0,
    "ssh-fails": 3,
    "ssh-skipped": 0,
    "ssh-ok": 0,
    "browser-ok": 0,
    "browser-fails": 1,
    "aloha-ok": 0,
    "supervisor": 0,
}


def test_every_workflow_has_a_conformance_case() -> None:
    from workflows import all_workflows

    covered = {workflow for workflow, _ in CASES.values()} | TWINS
    assert set(all_workflows()) - covered == set()


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_engines_leave_the_same_journal_and_exit_code(
    hatchet_world: HatchetWorld, worker: WorkerProcess, case: str
) -> None:
    workflow, payload = CASES[case]
    results = {engine: run(hatchet_world, engine, workflow, payload) for engine in ENGINES}
    (local_code, local), (hatchet_code, hatchet) = results["local"], results["hatchet"]
    assert local == hatchet, f"{case}: local {local} != hatchet {hatchet}"
    assert local_code == hatchet_code == EXPECTED_CODES[case], (local_code, hatchet_code)


def test_branches_skip_only_the_failed_steps_dependents(
    hatchet_world: HatchetWorld, worker: WorkerProcess
) -> None:
    code, seen = run(hatchet_world, "hatchet", "conf-branches", {})
    assert code == 7 and seen["job"] == ("failed", 7)
    states = {name: (state, attempts) for name, state, attempts, _, _ in seen["steps"]}
    assert states == {
        "root": ("succeeded", 1),
        "fails": ("failed", 1),
        "dependent": ("skipped", 0),
        "grandchild": ("skipped", 0),
        "independent": ("succeeded", 1),
        "nothing": ("skipped", 1),
        "flaky": ("succeeded", 2),
    }


def _cancel(world: HatchetWorld, engine: str) -> tuple[int, dict[str, Any]]:
    marker = f"{engine}-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "win_automation",
            "run",
            "conf-cancel",
            "--engine",
            engine,
            "--json",
            "--input",
            json.dumps({"marker": marker}),
        ],
        env=world.env,
        cwd=world.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = None
    deadline = time.monotonic() + 60
    while job_id is None and time.monotonic() < deadline:
        conn = journal(world)
        try:
            row = conn.execute(
                "SELECT j.job_id FROM jobs j JOIN steps s ON s.job_id = j.job_id"
                " WHERE j.workflow = 'conf-cancel' AND j.input_json LIKE ? AND s.state = 'running'",
                (f"%{marker}%",),
            ).fetchone()
        except sqlite3.OperationalError:
            row = None
        finally:
            conn.close()
        job_id = row[0] if row else None
        time.sleep(0.1)
    assert job_id, proc.communicate(timeout=5)
    cancelled = world.cli("jobs", "cancel", job_id, "--wait", "20s")
    assert cancelled.code == 0, cancelled.stderr
    proc.communicate(timeout=60)
    return proc.returncode, record(world, job_id)


def test_a_cancel_ends_the_job_alike_on_both_engines(
    hatchet_world: HatchetWorld, worker: WorkerProcess
) -> None:
    local_code, local = _cancel(hatchet_world, "local")
    hatchet_code, hatchet = _cancel(hatchet_world, "hatchet")
    assert local == hatchet, (local, hatchet)
    assert local["job"][0] == "cancelled" and local["steps"][0][1] == "cancelled"
    assert local_code == hatchet_code == 130
