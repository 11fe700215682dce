"""`win-automation aloha run|stop|health` as users meet them: real CLI processes, the Aloha
stand-ins, the test sshd's desktop probe, one journal."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from aloha_standin import Fault
from fixture_aloha import AlohaWorld, aloha  # noqa: F401
from fixture_jobs import wait_for

TASK = "Open Notepad and type the secret phrase zebra-quartz-77"


def cli(world: AlohaWorld, *args: str, env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "win_automation", *args],
        env={**world.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_json_shape_exit_code_metrics_and_logs_hold_no_task_text(aloha: AlohaWorld) -> None:  # noqa: F811
    result = cli(aloha, "--debug", "aloha", "run", "--task", TASK, "--max-steps", "10", "--json", "--metrics")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    metric_lines = "\n".join(line for line in lines if line.startswith("metric="))
    outcome = json.loads("\n".join(line for line in lines if not line.startswith("metric=")))
    assert (outcome["workflow"], outcome["state"], outcome["exit_code"]) == ("aloha-task", "succeeded", 0)
    out = outcome["outputs"]["run-task"]
    assert (out["reason"], out["ended"], out["task_length"]) == ("ended", True, len(TASK))
    assert out["task_sha256"] == hashlib.sha256(TASK.encode()).hexdigest()
    assert "metric=aloha_runs_total value=1" in metric_lines
    response = json.loads((Path(outcome["artifacts_dir"]) / "response.json").read_text())
    assert response["exchanges"][2]["request"]["task"] == TASK  # the evidence has it...
    # ...the logs only its length and hash, and nothing of the answers
    assert "zebra-quartz" not in result.stderr and "Task started" not in result.stderr
    assert "A task is already running" not in result.stderr
    assert f"task_len={len(TASK)}" in result.stderr and out["task_sha256"] in result.stderr


BAD_INPUT = [
    (["--task", ""], "--task"),
    (["--task", "   "], "--task"),
    (["--task", "x" * 4001], "--task"),
    (["--task", "t", "--max-steps", "0"], "--max-steps"),
    (["--task", "t", "--max-steps", "501"], "--max-steps"),
    (["--task", "t", "--max-steps", "ten"], "--max-steps"),
    (["--task", "t", "--screen", "-1"], "--screen"),
    (["--task", "t", "--screen", "16"], "--screen"),
    (["--task", "t", "--screen", "left"], "--screen"),
    (["--task", "t", "--timeout", "0"], "--timeout"),
    (["--task", "t", "--timeout", "soon"], "--timeout"),
    (["--task", "t", "--timeout", "2d"], "--timeout"),
    (["--task", "t", "--trace-id", "../x"], "--trace-id"),
]


def test_bad_input_is_exit_2_naming_the_option_and_records_nothing(aloha: AlohaWorld) -> None:  # noqa: F811
    procs = [  # one CLI process per case, all at once
        subprocess.Popen(
            [sys.executable, "-m", "win_automation", "aloha", "run", *args],
            env=aloha.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in BAD_INPUT
    ]
    for proc, (args, option) in zip(procs, BAD_INPUT, strict=True):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, err)
        [line] = err.strip().splitlines()
        assert line.startswith(f"error: {option}: "), (args, line)
    assert aloha.client.requests == [] and aloha.server.requests == []
    journal = Path(aloha.env["WIN_AUTOMATION_DATA_DIR"]) / "journal.sqlite3"
    if journal.exists():
        with sqlite3.connect(journal) as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_run_failures_end_with_one_line_and_their_exit_code(aloha: AlohaWorld, desktop) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    desktop("locked")
    locked = cli(aloha, "aloha", "run", "--task", TASK)
    assert locked.returncode == 1 and "the VM desktop is locked" in locked.stderr.splitlines()[-1]
    desktop("unlocked")
    aloha.client.faults.append(
        Fault("/run_task", status=409, body='{"status": "error"}', content_type="application/json")
    )
    busy = cli(aloha, "aloha", "run", "--task", TASK)
    assert busy.returncode == 1 and "desktop is busy" in busy.stderr.splitlines()[-1]
    aloha.server.stop_after = 1000
    late = cli(aloha, "aloha", "run", "--task", TASK, "--timeout", "500ms")
    assert late.returncode == 124 and "passed its deadline of 0.5s" in late.stderr.splitlines()[-1]
    assert aloha.client.real_tasks()[-1].ended == "stopped"
    aloha.server.stop()
    down = cli(aloha, "aloha", "run", "--task", TASK)
    assert down.returncode == 3 and "Aloha server" in down.stderr.splitlines()[-1]
    assert down.stderr.count("retrying after a transient failure") == 2 and "attempt=1" in down.stderr
    for result in (locked, busy, late, down):
        assert "zebra-quartz" not in result.stderr


def test_jobs_cancel_stops_a_running_task(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.3
    proc = subprocess.Popen(
        [sys.executable, "-m", "win_automation", "aloha", "run", "--task", TASK, "--json"],
        env=aloha.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: aloha.client.real_tasks(), what="the task to start")
        listed = json.loads(cli(aloha, "jobs", "list", "--json").stdout)
        asked = time.monotonic()
        cancelled = cli(aloha, "jobs", "cancel", listed[0]["job_id"])
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - asked < 10  # jobs cancel itself is a process start
        assert proc.returncode == 130, err
        assert json.loads(out)["state"] == "cancelled"
        assert aloha.client.real_tasks()[0].ended == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_health_checks_each_service_and_never_probes_with_stop(aloha: AlohaWorld) -> None:  # noqa: F811
    ok = cli(aloha, "aloha", "health", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    assert [(s["service"], s["ok"], s["status"]) for s in report["services"]] == [
        ("server", True, 200),
        ("client", True, 404),
    ]
    assert all(isinstance(s["latency_ms"], int) for s in report["services"])
    aloha.client.stop()
    down = cli(aloha, "aloha", "health", "--json")
    assert down.returncode == 3
    server, client = json.loads(down.stdout)["services"]
    assert server["ok"] and not client["ok"] and "cannot connect to the Aloha client" in client["problem"]
    aloha.client.start()
    aloha.server.health = "html500"
    table = cli(aloha, "aloha", "health")
    assert table.returncode == 1 and "answered GET / with 500" in table.stdout
    assert not [r for r in aloha.client.routes() if r.endswith("/stop")]


def test_stop_asks_the_client_and_says_whether_a_task_ran(aloha: AlohaWorld) -> None:  # noqa: F811
    idle = cli(aloha, "aloha", "stop", "--json")
    assert (idle.returncode, json.loads(idle.stdout)) == (0, {"stopped": False})
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.3
    import httpx

    httpx.post(
        aloha.client.url + "/run_task",
        json={"task": "x", "server_url": aloha.server.url + "/generate_action"},
    )
    busy = cli(aloha, "aloha", "stop")
    assert busy.returncode == 0 and "stop sent" in busy.stdout
    aloha.client.wait_idle()
    assert aloha.client.tasks[-1].ended == "stopped"


def test_aloha_is_in_help(aloha: AlohaWorld) -> None:  # noqa: F811
    result = cli(aloha, "aloha", "--help")
    assert result.returncode == 0 and all(c in result.stdout for c in ("run", "stop", "health"))
