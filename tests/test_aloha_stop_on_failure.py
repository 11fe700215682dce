"""A started Aloha task is sent /stop however following it ends: not only at the deadline or on
cancel, but when a poll fails (an answer that is not Aloha's, one over the cap, a compressed one,
the connection dropped, a 500 page), on a bug of ours, and on Ctrl-C or SIGTERM of the CLI. Else
the task went on driving the desktop unwatched and the next job was refused 409 busy.

Against the stand-ins (real HTTP servers) and the test sshd's desktop probe: the stand-in client
must have seen the /stop, response.json must record it, and the job must end as the README says.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aloha_standin import Fault
from fixture_aloha import AlohaWorld, aloha  # noqa: F401
from fixture_jobs import wait_for

from win_automation.config import Config
from win_automation.engines import dispatch
from win_automation.engines.outcome import JobOutcome
from win_automation.jobs.state import JobState
from win_automation.operations.aloha import Aloha
from workflows.aloha_task import aloha_task

TASK = "Open Notepad and type hello"
NOT_ALOHA = "<!doctype html><title>Welcome to nginx!</title>"


def run(config: Config) -> tuple[JobOutcome, dict[str, Any]]:
    model = aloha_task.input.model_validate({"task": TASK, "timeout_seconds": 120})
    outcome = dispatch.run_job(config, aloha_task, model, engine="local")
    folder = config.artifacts.out_dir / outcome.job_id
    return outcome, json.loads((folder / "response.json").read_text())


def polls(world: AlohaWorld) -> int:
    return sum(
        path == "/run_task" and body["task"].startswith("win-automation:")
        for _, path, body in world.client.requests
    )


def after_polls(world: AlohaWorld, act: Any, count: int = 3) -> None:
    """`act()` once the task runs and was polled `count` times (in a thread)."""

    def wait_then_act() -> None:
        wait_for(lambda: polls(world) >= count, what=f"{count} polls", timeout=60)
        act()

    threading.Thread(target=wait_then_act, daemon=True).start()


def assert_stopped(world: AlohaWorld, response: dict[str, Any], answer: int | None = 200) -> None:
    """The stand-in client took /stop after the task started, its task ended `stopped`, and
    response.json's last record and `error` say so."""
    seen = world.client.routes()
    assert "POST /stop" in seen[seen.index("POST /run_task") :], seen
    world.client.wait_idle()
    [task] = world.client.real_tasks()
    assert task.ended == "stopped"
    last = response["exchanges"][-1]
    assert (last["service"], last["route"], last["attempt"], last["status"]) == ("client", "/stop", 1, answer)
    error = response["error"]
    assert (error["stop_sent"], error["stop_answer"]) == (True, answer), error


FAULTS = [  # what the poll gets mid-task, the exit code, and words of the error
    (Fault("/run_task", status=200, body=NOT_ALOHA), 1, "answered /run_task with 200 and an HTML page"),
    (Fault("/run_task"), 1, "answered /run_task with 500 and an HTML page"),
    (
        Fault("/run_task", status=409, content_type="application/json", size=500 << 20),
        1,
        "with over 16 MiB",
    ),
    (
        Fault("/run_task", status=409, content_type="application/json", size=1 << 20, gzip=True),
        1,
        "content-encoding 'gzip'",
    ),
    (Fault("/run_task", drop=True), 3, "while the task ran: the Aloha client at"),
]


@pytest.mark.parametrize(
    ("fault", "code", "words"), FAULTS, ids=["not-aloha", "html500", "huge", "gzip", "dropped"]
)
def test_a_poll_that_fails_mid_task_sends_stop_and_keeps_its_error(
    aloha: AlohaWorld,  # noqa: F811
    fault: Fault,
    code: int,
    words: str,
) -> None:
    aloha.server.stop_after = 1000  # the task would run for minutes
    # a dropped connection is retried: dropped three times, the client is gone
    after_polls(aloha, lambda: aloha.client.faults.extend([fault] * (3 if fault.drop else 1)))
    outcome, response = run(aloha.config(request_timeout="30s"))
    error = outcome.error or ""
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, code), error
    assert words in error and error.endswith("; the task was sent /stop"), error
    assert "\n" not in error and "Traceback" not in error
    assert_stopped(aloha, response)
    assert error.endswith(": " + response["error"]["message"]) and response["error"]["exit_code"] == code
    assert response["error"]["stop_error"] is None
    # the failed step's output is journaled with the failure (as a deadline's)
    out = outcome.outputs["run-task"].model_dump()
    assert (out["reason"], out["stop_sent"], out["ended"]) == ("failed", True, False)
    assert out["polls"] >= 3 and out["exchanges"] == response["exchanges_total"]
    # the desktop is free: the next job is not refused 409 busy
    aloha.server.stop_after = 3
    again, _ = run(aloha.config())
    assert again.state == JobState.SUCCEEDED, again.error


def test_a_client_gone_mid_task_is_still_exit_3_and_its_stop_is_one_bounded_attempt(
    aloha: AlohaWorld,  # noqa: F811
) -> None:
    aloha.server.stop_after = 1000
    after_polls(aloha, aloha.client.stop)
    outcome, response = run(aloha.config())
    error = outcome.error or ""
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 3), error
    assert "while the task ran" in error and "; sending the task /stop failed: cannot connect" in error
    polled, stop = response["exchanges"][-4:-1], response["exchanges"][-1]
    assert [(e["route"], e["attempt"]) for e in polled] == [("/run_task", n) for n in (1, 2, 3)]
    assert (stop["route"], stop["attempt"], stop["status"]) == ("/stop", 1, None)  # not retried
    assert "cannot connect" in stop["error"]
    assert response["error"]["stop_sent"] is True and "cannot connect" in response["error"]["stop_error"]
    assert outcome.outputs["run-task"].model_dump()["stop_sent"] is True


def test_a_stop_that_hangs_is_given_up_within_the_request_timeout(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.faults.append(Fault("/stop", hang=30.0, status=200))
    after_polls(aloha, lambda: aloha.client.faults.append(Fault("/run_task", status=200, body=NOT_ALOHA)))
    outcome, response = run(aloha.config(request_timeout="1s"))
    error = outcome.error or ""
    assert outcome.exit_code == 1 and "200 and an HTML page" in error, error  # the poll's error stays
    assert "; sending the task /stop failed: " in error and "did not answer within 1s" in error
    [stop] = [e for e in response["exchanges"] if e["route"] == "/stop"]
    assert (stop["attempt"], stop["error"]) == (1, "no answer within 1s")
    assert 900 <= stop["duration_ms"] < 5000  # not the 30 s hang
    aloha.client.closing.set()  # let the hung /stop go (and the task end)
    aloha.client.wait_idle()


def test_a_bug_of_ours_mid_task_sends_stop(aloha: AlohaWorld, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """An exception no component can cause (a bug in win-automation itself): made here."""
    aloha.server.stop_after = 1000
    running = Aloha.running

    def buggy(self: Aloha, stop: Any = None) -> bool:
        if polls(aloha) >= 3:
            raise RuntimeError("a bug in the poll")
        return running(self, stop)

    monkeypatch.setattr(Aloha, "running", buggy)
    outcome, response = run(aloha.config())
    assert (outcome.state, outcome.exit_code) == (JobState.FAILED, 1)
    assert "RuntimeError: a bug in the poll" in (outcome.error or "")
    assert_stopped(aloha, response)
    assert response["error"]["message"] == "RuntimeError: a bug in the poll"


def cli_job(world: AlohaWorld, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "win_automation", "aloha", "run", "--task", TASK, "--json", *args],
        env={**world.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as from a terminal, also when the suite runs with SIGINT ignored (`cmd &`)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def interrupt(
    world: AlohaWorld, proc: subprocess.Popen[str], signum: int
) -> tuple[str, float, dict[str, Any]]:
    """Send `signum` once the task was polled a few times: the CLI's stderr, the seconds it took
    to exit after it (exit 130), and the job's response.json (the job recorded interrupted)."""
    try:
        wait_for(lambda: polls(world) >= 3, what="3 polls", timeout=60)
        proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    listed = subprocess.run(
        [sys.executable, "-m", "win_automation", "jobs", "list", "--json"],
        env=world.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [job] = json.loads(listed.stdout)
    assert job["state"] == "interrupted", job
    assert proc.returncode == 130, err
    folder = Path(world.env["WIN_AUTOMATION_ARTIFACT_OUT"]) / job["job_id"]
    return err, took, json.loads((folder / "response.json").read_text())


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_of_the_cli_mid_task_sends_stop(aloha: AlohaWorld, signame: str) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    err, _, response = interrupt(aloha, cli_job(aloha), getattr(signal, signame))
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err, err
    assert_stopped(aloha, response)
    assert response["error"]["message"] == "interrupted (Ctrl-C or SIGTERM)"
    assert response["error"]["exit_code"] == 130


def test_an_interrupted_cli_gives_up_a_hanging_stop_within_the_request_timeout(aloha: AlohaWorld) -> None:  # noqa: F811
    aloha.server.stop_after = 1000
    aloha.client.faults.append(Fault("/stop", hang=30.0, status=200))
    err, took, response = interrupt(
        aloha, cli_job(aloha, env=aloha.aloha_env(request_timeout="1s")), signal.SIGTERM
    )
    assert took < 15, err  # the 1 s of the /stop and the exit: not the 30 s hang
    [stop] = [e for e in response["exchanges"] if e["route"] == "/stop"]
    assert (stop["attempt"], stop["error"]) == (1, "no answer within 1s")
    assert "did not answer within 1s" in response["error"]["stop_error"]
    aloha.client.closing.set()
    aloha.client.wait_idle()


def test_sigterm_while_a_poll_hangs_records_the_poll_and_sends_stop(aloha: AlohaWorld) -> None:  # noqa: F811
    """The signal lands inside an HTTP request: that poll is on record, cut short, and /stop
    still goes out on the same client."""
    aloha.server.stop_after = 1000
    proc = cli_job(aloha, env=aloha.aloha_env(request_timeout="60s"))
    wait_for(lambda: polls(aloha) >= 3, what="3 polls", timeout=60)
    aloha.client.faults.append(Fault("/run_task", hang=60.0, status=409, body="{}"))
    wait_for(lambda: not aloha.client.faults, what="the hung poll", timeout=60)
    time.sleep(0.3)  # the CLI waits for its answer
    _, _, response = interrupt(aloha, proc, signal.SIGTERM)
    poll, stop = response["exchanges"][-2:]
    assert (poll["route"], poll["status"]) == ("/run_task", None), poll
    assert poll["error"] == "interrupted before an answer (Ctrl-C or SIGTERM)"
    assert (stop["route"], stop["status"]) == ("/stop", 200)
    assert_stopped(aloha, response)
