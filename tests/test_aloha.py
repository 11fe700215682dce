"""The `aloha-task` workflow on the local engine, in this process, against the Aloha stand-ins and
the test sshd (its desktop probe): the task's life, the retry rule, every fault and its exit code,
and response.json written whatever happens."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest
from aloha_standin import Fault
from fixture_aloha import AlohaWorld, aloha  # noqa: F401
from fixture_jobs import wait_for

from win_automation import metrics
from win_automation.config import Config
from win_automation.engines import dispatch
from win_automation.engines.outcome import JobOutcome
from win_automation.jobs.state import JobState
from workflows.aloha_task import aloha_task

TASK = "Open Notepad and type hello"


def run(config: Config, **fields: Any) -> tuple[JobOutcome, dict[str, Any]]:
    model = aloha_task.input.model_validate({"task": TASK, **fields})
    outcome = dispatch.run_job(config, aloha_task, model, engine="local")
    folder = config.artifacts.out_dir / outcome.job_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(a["type"], a["path"]) for a in manifest["artifacts"]] == [("aloha", "response.json")]
    return outcome, json.loads((folder / "response.json").read_text())


def routes(response: dict[str, Any]) -> list[str]:
    return [
        f"{e['service']} {e['method']} {e['route']} {e['status']} #{e['attempt']}"
        for e in response["exchanges"]
    ]


def assert_in_order(response: dict[str, Any], exchanges: int) -> None:
    """Records number every exchange in order: each covers `count` of them, seq to last_seq."""
    seq = 1
    for record in response["exchanges"]:
        assert (record["seq"], record["last_seq"]) == (seq, seq + record["count"] - 1), record
        seq += record["count"]
    assert seq - 1 == response["exchanges_total"] == exchanges and response["exchanges_omitted"] is None


def test_a_task_runs_to_its_end_and_every_exchange_is_recorded(aloha: AlohaWorld) -> None:  # noqa: F811
    before = metrics.snapshot()["aloha_runs_total"]
    outcome, response = run(aloha.config(), trace_id="notepad", max_steps=20, screen=1)
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    out = outcome.outputs["run-task"].model_dump()
    assert (out["reason"], out["ended"], out["stop_sent"]) == ("ended", True, False)
    [task] = aloha.client.real_tasks()
    assert (task.task, task.max_steps, task.trace_id, task.screen) == (TASK, 20, "notepad", 1)
    assert task.server_url == aloha.server.url + "/generate_action" and task.ended == "stop-action"
    seen = routes(response)
    assert seen[:3] == ["server GET / 200 #1", "client GET / 404 #1", "client POST /run_task 200 #1"]
    assert seen[-1] == "client POST /run_task 200 #1"  # the probe: the task had ended
    # the polls while it ran answered the same 409: one record, with their count
    assert seen[3:-1] == ["client POST /run_task 409 #1"]
    busy = response["exchanges"][3]
    assert busy["count"] > 1 and out["polls"] == busy["count"] + 1
    assert busy["started_at"] < busy["last_started_at"] and busy["body"]["status"] == "error"
    start = response["exchanges"][2]
    assert start["request"]["task"] == TASK and start["body"] == {
        "status": "success",
        "message": "Task started",
    }
    assert_in_order(response, out["exchanges"])
    assert all({"started_at", "duration_ms", "body_sha256"} <= set(e) for e in response["exchanges"])
    assert response["task_length"] == len(TASK) and response["outcome"]["reason"] == "ended"
    assert metrics.snapshot()["aloha_runs_total"] == before + 1
    # the desktop probe went first, over SSH
    assert any(
        r.get("desktop") == "unlocked" for r in map(json.loads, aloha.sshd.reports.read_text().splitlines())
    )


@pytest.mark.parametrize("state", ["locked", "no-user"])
def test_a_locked_or_empty_desktop_refuses_before_anything_reaches_aloha(
    aloha: AlohaWorld,  # noqa: F811
    desktop: Any,
    state: str,
) -> None:
    desktop(state)
    outcome, response = run(aloha.config())
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 1)
    assert ("locked" if state == "locked" else "nobody is logged on") in (outcome.error or "")
    assert aloha.server.requests == [] and aloha.client.requests == []
    assert response["exchanges"] == [] and response["error"]["exit_code"] == 1


def test_a_busy_desktop_409_is_exit_1_and_starts_nothing(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.faults.append(
        Fault(
            "/run_task",
            status=409,
            content_type="application/json",
            body='{"status": "error", "message": "A task is already running"}',
        )
    )
    outcome, response = run(aloha.config())
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 1)
    assert "desktop is busy" in (outcome.error or "") and "nothing was started" in (outcome.error or "")
    assert routes(response)[-1] == "client POST /run_task 409 #1" and aloha.client.tasks == []


def test_the_deadline_sends_stop_waits_for_the_end_and_exits_124(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.2
    started = time.monotonic()
    outcome, response = run(aloha.config(), timeout_seconds=0.6)
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 124)
    assert "passed its deadline of 0.6s and was sent /stop (it ended)" in (outcome.error or "")
    [task] = aloha.client.real_tasks()
    assert task.ended == "stopped" and task.done.is_set()
    seen = routes(response)
    assert "client POST /stop 200 #1" in seen and seen[-1] == "client POST /run_task 200 #1"
    assert outcome.outputs["run-task"].model_dump()["reason"] == "deadline"  # journaled with the failure
    assert time.monotonic() - started < 5


def test_the_deadline_is_exit_124_even_when_stop_cannot_reach_the_client(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.faults += [Fault("/stop", drop=True)] * 3
    outcome, response = run(aloha.config(), timeout_seconds=0.3)
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 124)
    assert "sent /stop (stopping it failed: " in (outcome.error or "")
    assert [e["attempt"] for e in response["exchanges"] if e["route"] == "/stop"] == [1, 2, 3]
    assert httpx.post(aloha.client.url + "/stop").status_code == 200  # the task still ran
    aloha.client.wait_idle()


def _fail(world: AlohaWorld, config: Config | None = None) -> tuple[JobOutcome, dict[str, Any]]:
    outcome, response = run(config or world.config())
    assert outcome.state == JobState.FAILED
    assert response["error"]["exit_code"] == outcome.exit_code
    return outcome, response


@pytest.mark.parametrize("service", ["server", "client"])
def test_a_service_down_is_exit_3_after_three_attempts(aloha: AlohaWorld, service: str) -> None:  # noqa: F811
    getattr(aloha, service).stop()
    outcome, response = _fail(aloha)
    assert outcome.exit_code == 3 and f"Aloha {service}" in (outcome.error or "")
    failed = [e for e in response["exchanges"] if e["service"] == service]
    assert [e["attempt"] for e in failed] == [1, 2, 3] and all("cannot connect" in e["error"] for e in failed)
    assert aloha.client.tasks == []


def test_a_500_html_health_page_is_exit_1_and_not_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.health = "html500"
    outcome, response = _fail(aloha)
    assert outcome.exit_code == 1 and "Aloha server answered GET / with 500" in (outcome.error or "")
    assert routes(response) == ["server GET / 500 #1", "client GET / 404 #1"]
    assert response["exchanges"][0]["body"].startswith("<!doctype html>")  # kept as text, never parsed


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (Fault("/run_task"), "with 500 and an HTML page"),
        (
            Fault("/run_task", status=200, body="Task started", content_type="text/plain"),
            "body that is not JSON",
        ),
        (
            Fault("/run_task", status=400, body='{"status": "error"}', content_type="application/json"),
            "refused",
        ),
    ],
)
def test_a_refusal_of_run_task_is_exit_1_and_not_retried(aloha: AlohaWorld, fault: Fault, words: str) -> None:  # noqa: F811
    aloha.client.faults.append(fault)
    outcome, response = _fail(aloha)
    assert outcome.exit_code == 1 and words in (outcome.error or ""), outcome.error
    assert [e["attempt"] for e in response["exchanges"] if e["route"] == "/run_task"] == [1]


def test_no_answer_within_the_request_timeout_is_exit_3_and_not_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.client.faults.append(Fault("/run_task", hang=3.0, status=200))
    outcome, response = _fail(aloha, aloha.config(request_timeout="500ms"))
    assert outcome.exit_code == 3 and "did not answer within 0.5s" in (outcome.error or "")
    [start] = [e for e in response["exchanges"] if e["route"] == "/run_task"]
    assert (start["attempt"], start["status"], start["error"]) == (1, None, "no answer within 0.5s")


def test_an_answer_trickled_past_the_request_timeout_is_exit_3_and_not_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    """A byte every 0.2 s keeps each read within a 0.5 s timeout: the whole answer must be."""
    body = '{"status": "success", "message": "Task started"}'
    aloha.client.faults.append(
        Fault("/run_task", status=200, body=body, content_type="application/json", trickle=0.2)
    )
    started = time.monotonic()
    outcome, response = _fail(aloha, aloha.config(request_timeout="500ms"))
    assert time.monotonic() - started < 5  # not the 10 s the trickle takes
    assert outcome.exit_code == 3 and "did not answer within 0.5s" in (outcome.error or ""), outcome.error
    assert [e["attempt"] for e in response["exchanges"] if e["route"] == "/run_task"] == [1]


def test_an_answer_without_end_is_cut_at_16_mib_exit_1_and_not_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    """Another service on Aloha's port streaming for ever: never held whole in memory."""
    aloha.client.faults.append(Fault("/run_task", status=200, content_type="application/json", endless=True))
    outcome, response = _fail(aloha, aloha.config(request_timeout="30s"))
    assert outcome.exit_code == 1 and "with over 16 MiB" in (outcome.error or ""), outcome.error
    [start] = [e for e in response["exchanges"] if e["route"] == "/run_task"]
    assert (start["attempt"], start["status"], start["error"]) == (1, None, "over 16 MiB")


def test_a_client_that_drops_mid_task_is_exit_3(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000

    def kill_once_started() -> None:
        wait_for(lambda: aloha.client.real_tasks(), what="the task to start")
        time.sleep(0.2)
        aloha.client.stop()

    threading.Thread(target=kill_once_started, daemon=True).start()
    outcome, response = _fail(aloha)
    assert outcome.exit_code == 3 and "while the task ran" in (outcome.error or "")
    assert [e["attempt"] for e in response["exchanges"][-4:-1]] == [1, 2, 3]
    assert response["exchanges"][-1]["route"] == "/stop"  # tried once: the client is gone


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried_then_succeed_or_exit_3(
    aloha: AlohaWorld,  # noqa: F811
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Fault("/", status=status, body="bad gateway", content_type="text/plain")
    aloha.server.faults += [gateway, gateway]
    with caplog.at_level(logging.WARNING, logger="win_automation.retry"):
        outcome, response = run(aloha.config())
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    assert routes(response)[:3] == [
        f"server GET / {status} #1",
        f"server GET / {status} #2",
        "server GET / 200 #3",
    ]
    retries = [r for r in caplog.records if r.getMessage() == "retrying after a transient failure"]
    assert [(r.attempt, r.op) for r in retries] == [(1, "aloha.server/"), (2, "aloha.server/")]  # type: ignore[attr-defined]
    if status == 503:  # three in a row: unreachable after the last attempt
        aloha.server.faults += [gateway] * 3
        outcome, response = _fail(aloha)
        assert outcome.exit_code == 3 and f"answered {status}" in (outcome.error or "")
        assert routes(response) == [f"server GET / {status} #{n}" for n in (1, 2, 3)] + [
            "client GET / 404 #1"
        ]


def test_a_dropped_connection_before_the_answer_is_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.client.faults.append(Fault("/run_task", drop=True))
    outcome, response = run(aloha.config())
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    starts = [e for e in response["exchanges"] if e["route"] == "/run_task"][:2]
    assert [(e["attempt"], e["status"]) for e in starts] == [(1, None), (2, 200)]
    assert "connection dropped" in starts[0]["error"]


def test_jobs_cancel_stops_the_task_within_a_few_seconds(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.3
    config = aloha.config()
    done: list[tuple[JobOutcome, dict[str, Any]]] = []
    runner = threading.Thread(target=lambda: done.append(run(config)))
    runner.start()
    wait_for(lambda: aloha.client.real_tasks(), what="the task to start")
    [job] = dispatch.list_jobs(config, limit=1)
    asked = time.monotonic()
    record = dispatch.cancel_job(config, job.job.job_id, patience=10)
    assert record.state == JobState.CANCELLED and time.monotonic() - asked < 5
    runner.join(10)
    outcome, response = done[0]
    assert outcome.exit_code == 130 and aloha.client.real_tasks()[0].ended == "stopped"
    assert "client POST /stop 200 #1" in routes(response)


def test_the_services_are_reached_through_the_ssh_tunnel_when_forwarding(aloha: AlohaWorld) -> None:  # noqa: F811
    # the URLs' host does not resolve: only the forward over the sshd (to its loopback) reaches them
    env = {
        **aloha.env,
        "WIN_AUTOMATION_SSH_FORWARD_SERVICES": "true",
        "WIN_AUTOMATION_ALOHA_SERVER_URL": f"http://win-vm.invalid:{aloha.server.port}/",
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": f"http://win-vm.invalid:{aloha.client.port}",
    }
    from win_automation.config import load_config

    outcome, response = run(load_config(None, env).config)
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    assert [e["status"] for e in response["exchanges"][:3]] == [200, 404, 200]
    # the client is told the server's URL as configured (it reaches it from the VM; this stand-in
    # client on the host cannot, so its task ends at its first step)
    [task] = aloha.client.real_tasks()
    assert (task.server_url, task.ended) == (
        f"http://win-vm.invalid:{aloha.server.port}/generate_action",
        "server-unreachable",
    )


def _polls(world: AlohaWorld) -> int:
    return sum(
        path == "/run_task" and body["task"].startswith("win-automation:")
        for _, path, body in world.client.requests
    )


def test_a_long_task_polled_every_10_ms_keeps_one_record_for_its_identical_polls(aloha: AlohaWorld) -> None:  # noqa: F811
    """Each poll's 409 was a record of its own: hours of them grew response.json (and the
    process) without bound. Identical ones are one record, however many."""
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.05

    def end_after_many_polls() -> None:
        wait_for(lambda: _polls(aloha) >= 60, what="60 polls", timeout=60)
        httpx.post(aloha.client.url + "/stop")  # the task ends between two steps

    threading.Thread(target=end_after_many_polls, daemon=True).start()
    outcome, response = run(aloha.config(poll_interval="10ms"), timeout_seconds=120)
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    out = outcome.outputs["run-task"].model_dump()
    assert routes(response) == [
        "server GET / 200 #1",
        "client GET / 404 #1",
        "client POST /run_task 200 #1",
        "client POST /run_task 409 #1",
        "client POST /run_task 200 #1",
    ]
    assert response["exchanges"][3]["count"] == out["polls"] - 1 >= 59
    assert_in_order(response, out["exchanges"])
    assert out["exchanges"] == out["polls"] + 3
    path = aloha.config().artifacts.out_dir / outcome.job_id / "response.json"
    assert path.stat().st_size < 8192


def test_a_state_change_or_a_new_answer_mid_task_starts_a_new_record(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.step_seconds = 0.05
    other = '{"status": "error", "message": "A task is already running", "step": 7}'

    def change_then_end() -> None:
        wait_for(lambda: _polls(aloha) >= 5, what="5 polls", timeout=60)
        asked = _polls(aloha)
        aloha.client.faults += [
            Fault("/run_task", status=409, body=other, content_type="application/json"),
            Fault("/run_task", status=503, body="busy", content_type="text/plain"),
        ]
        wait_for(lambda: _polls(aloha) >= asked + 8, what="8 more polls", timeout=60)
        httpx.post(aloha.client.url + "/stop")

    threading.Thread(target=change_then_end, daemon=True).start()
    outcome, response = run(aloha.config(poll_interval="10ms"), timeout_seconds=120)
    assert outcome.state == JobState.SUCCEEDED, outcome.error
    assert routes(response)[3:] == [
        "client POST /run_task 409 #1",
        "client POST /run_task 409 #1",  # another answer: the same status, not the same body
        "client POST /run_task 503 #1",
        "client POST /run_task 409 #2",  # the retry
        "client POST /run_task 409 #1",
        "client POST /run_task 200 #1",
    ]
    records = response["exchanges"]
    assert records[4]["body"]["step"] == 7 and records[4]["count"] == 1 and records[3]["count"] >= 4
    assert records[3]["body_sha256"] == records[6]["body_sha256"] == records[7]["body_sha256"]
    assert_in_order(response, outcome.outputs["run-task"].model_dump()["exchanges"])


def test_one_huge_answer_to_a_poll_is_cut_at_16_mib_exit_1_and_not_retried(aloha: AlohaWorld) -> None:  # noqa: F811
    """A 500 MiB JSON answer (with its length) mid-task: read up to 16 MiB, then one line."""
    aloha.server.stop_after = 1000
    huge = Fault("/run_task", status=409, content_type="application/json", size=500 << 20)

    def answer_huge() -> None:
        wait_for(lambda: _polls(aloha) >= 3, what="3 polls", timeout=60)
        aloha.client.faults.append(huge)

    threading.Thread(target=answer_huge, daemon=True).start()
    outcome, response = _fail(aloha, aloha.config(request_timeout="30s"))
    error = outcome.error or ""
    assert outcome.exit_code == 1 and "answered POST /run_task with over 16 MiB" in error, error
    assert "\n" not in error and "Traceback" not in error
    last, stop = response["exchanges"][-2:]  # then the task was sent /stop
    assert (stop["route"], stop["status"]) == ("/stop", 200)
    assert (last["route"], last["attempt"], last["status"], last["error"]) == (
        "/run_task",
        1,
        None,
        "over 16 MiB",
    )
    assert huge.sent < 64 << 20  # the rest was never read (socket buffers hold a few MiB)
