"""Faults between the CLI and a Hatchet engine (the fake one, through a stalling proxy).

- An engine that stops answering (paused, wedged: TCP alive, no gRPC answer): every call the CLI
  makes to it has `hatchet.request_timeout` as its deadline, a trigger is sent once, and nothing
  is left lying. Before, the SDK's calls had no deadline and were retried (3 attempts of ~70 s,
  keepalive's timeout): `run --engine hatchet` took 216 s to fail and triggered the run 3 times.
- A job input too large for a gRPC message (a script of 5 MB): a usage error before anything is
  sent; it was `not reachable (RESOURCE_EXHAUSTED ...)`, exit 3, which scripts retry.
- A worker whose engine answers the version check and then not the workflows' registration:
  exit 3 at the deadline (it waited for good: the SDK's PutWorkflow has no deadline).
- A GetRunDetails answer the CLI cannot use (a done run with a status it does not know, a step's
  output not JSON or not its model, a task the workflow lacks, a run COMPLETED without a step's
  output): one line naming the engine and the problem, exit 1, the job as last recorded, and
  `jobs list` notes it once. It was a traceback in every job command, `jobs list` included (and
  the run COMPLETED without a step was journaled succeeded). A status it does not know on an
  unfinished run (a newer engine's EVICTED) is not finished, never a crash."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fixture_hatchet import ROOT, world_env
from hatchet_sdk.contracts.v1 import workflows_pb2 as w1
from stall_proxy import StallProxy

from win_automation.config import load_config
from win_automation.engines.hatchet.client import compile_workflow, connect
from win_automation.engines.hatchet.runtime import TaskRuntime
from workflows.ping import ping

if TYPE_CHECKING:
    from fake_hatchet import FakeHatchet

pytestmark = pytest.mark.slow
TIMEOUT = 2.0


@pytest.fixture
def engine() -> Iterator[FakeHatchet]:
    from fake_hatchet import FakeHatchet

    engine = FakeHatchet().start()
    yield engine
    engine.stop()


def world(engine: FakeHatchet, tmp_path: Path, proxy: StallProxy | None = None) -> dict[str, str]:
    """The CLI's environment: the engine (through `proxy` if given); no worker (runs stay queued)."""
    env = world_env(engine, tmp_path)
    if proxy is not None:
        env["HATCHET_CLIENT_HOST_PORT"] = f"127.0.0.1:{proxy.port}"
    env["WIN_AUTOMATION_HATCHET_REQUEST_TIMEOUT"] = f"{TIMEOUT:g}s"
    config = load_config(environ=env).config
    engine.put_workflow(compile_workflow(connect(config), ping, lambda: TaskRuntime(config)).to_proto())
    return env


def cli(env: dict[str, str], *args: str, proxy: StallProxy | None = None) -> tuple[int, str, str, float]:
    """The CLI's exit code, output and seconds taken; with `proxy`, the seconds from its first
    connection through it: its start-up (importing the SDK took 6 s on a loaded CI machine) is
    not part of a deadline."""
    started = time.monotonic()
    command = [sys.executable, "-m", "win_automation", *args]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    ended = time.monotonic()
    if proxy is not None:
        started = next((t for t in proxy.accepts if t >= started), ended)
    return proc.returncode, proc.stdout, proc.stderr, ended - started


def jobs(tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "data" / "journal.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT job_id, state FROM jobs").fetchall()
    finally:
        conn.close()


def test_a_trigger_without_answer_fails_at_its_deadline_and_is_sent_once(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    proxy = StallProxy(engine.port, down_budget=200, every_connection=True)
    try:
        env = world(engine, tmp_path, proxy)
        code, out, err, took = cli(
            env, "run", "ping", "--engine", "hatchet", "--input", '{"message": "hi"}', proxy=proxy
        )
    finally:
        proxy.close()
    assert code == 3, err
    assert took < TIMEOUT + 3, took
    [line] = err.strip().splitlines()
    assert "triggering ping: Hatchet at 127.0.0.1:" in line and f"gave no answer within {TIMEOUT:g}s" in line
    assert "the run may have started there all the same, as job " in line
    assert "Traceback" not in err and out == ""
    runs = list(engine.runs.values())
    assert len(runs) == 1, "the trigger was sent again"
    assert runs[0].metadata["job_id"] in line
    assert jobs(tmp_path) == []  # not recorded: nobody knows the run id here


def test_an_engine_that_stalls_while_followed_ends_the_wait_and_every_refresh(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    proxy = StallProxy(engine.port, every_connection=True)
    try:
        env = world(engine, tmp_path, proxy)
        queued = [cli(env, "run", "ping", "--engine", "hatchet", "--no-wait")[0] for _ in range(3)]
        assert queued == [0, 0, 0]
        waiting = subprocess.Popen(
            [sys.executable, "-m", "win_automation", "run", "ping", "--engine", "hatchet"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(jobs(tmp_path)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a poll or two answered
        proxy.hold()
        held = time.monotonic()
        out, err = waiting.communicate(timeout=60)
        took = time.monotonic() - held
        assert waiting.returncode == 3, err
        assert took < 2 * TIMEOUT + 5, took
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: following job ") and f"gave no answer within {TIMEOUT:g}s" in line
        assert "the run goes on there" in line and "Traceback" not in err
        # the record is what the engine last said: queued (no worker), not failed, not running
        assert {state for _, state in jobs(tmp_path)} == {"queued"}

        code, out, err, took = cli(env, "jobs", "list", proxy=proxy)
        assert code == 0 and took < TIMEOUT + 3, (took, err)
        assert err.count("note: could not refresh from Hatchet") == 1, err
        assert out.count("queued") == 4

        code, out, err, took = cli(env, "jobs", "cancel", jobs(tmp_path)[0][0], proxy=proxy)
        assert code == 3 and took < TIMEOUT + 3, (took, err)
        assert f"gave no answer within {TIMEOUT:g}s" in err and "Traceback" not in err
    finally:
        proxy.close()
    assert len(engine.runs) == 4


def test_an_engine_that_refuses_connections_is_not_reachable(engine: FakeHatchet, tmp_path: Path) -> None:
    """Nothing listening: the trigger never left, so it is tried again until the deadline, and
    the error names the cause."""
    proxy = StallProxy(engine.port)
    env = world(engine, tmp_path, proxy)
    proxy.close()  # the port now refuses
    code, out, err, took = cli(env, "run", "ping", "--engine", "hatchet", "--json")
    assert code == 3, err
    # no connection to time from: the start-up is in it (6 s of 10 on a loaded CI machine), and
    # the bound is far from what it was without a deadline (the SDK retried for good)
    assert took < TIMEOUT + 15, took
    [line] = err.strip().splitlines()
    assert "is not reachable (UNAVAILABLE" in line and "may have started" not in line
    assert json.loads(out or "null") is None and jobs(tmp_path) == []


def test_a_worker_facing_a_silent_engine_says_so_at_its_deadline(engine: FakeHatchet, tmp_path: Path) -> None:
    proxy = StallProxy(engine.port, down_budget=200, every_connection=True)
    try:
        env = world(engine, tmp_path, proxy)
        code, _out, err, took = cli(env, "worker", "--name", "stalled", proxy=proxy)
    finally:
        proxy.close()
    assert code == 3 and took < TIMEOUT + 3, (took, err)
    assert err.strip().splitlines()[-1] == (
        f"error: checking the engine version: Hatchet at 127.0.0.1:{proxy.port} gave no answer within"
        f" {TIMEOUT:g}s (paused or overloaded?)"
    )
    assert engine.workers == {}


def test_a_worker_whose_engine_stalls_at_registration_says_so_at_its_deadline(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    """The engine answers the version check, then never answers PutWorkflow (wedged: the
    connection and its keepalive pings stay alive). The SDK's registration has no deadline: the
    worker waited for good after "worker starting"."""
    engine.stalled.add("PutWorkflow")
    proxy = StallProxy(engine.port)  # forwards all: it times the worker from its first call
    try:
        env = world_env(engine, tmp_path)
        env["HATCHET_CLIENT_HOST_PORT"] = f"127.0.0.1:{proxy.port}"
        env["WIN_AUTOMATION_HATCHET_REQUEST_TIMEOUT"] = f"{TIMEOUT:g}s"
        code, _out, err, took = cli(env, "worker", "--name", "wedged", proxy=proxy)
    finally:
        proxy.close()
    assert code == 3 and took < TIMEOUT + 3, (took, err)
    assert err.strip().splitlines()[-1] == (
        f"error: registering workflow aloha-task: Hatchet at 127.0.0.1:{proxy.port} gave no answer within"
        f" {TIMEOUT:g}s (paused or overloaded?)"
    )
    assert "Traceback" not in err and engine.workers == {}


def test_an_input_too_large_for_a_message_is_a_usage_error_before_anything_is_sent(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    proxy = StallProxy(engine.port)
    try:
        env = world(engine, tmp_path, proxy)
        big = tmp_path / "input.json"
        big.write_text(json.dumps({"command": "# " + "x" * (5 << 20), "shell": "powershell"}))
        code, out, err, _took = cli(env, "run", "ssh-exec", "--engine", "hatchet", "--input-file", str(big))
    finally:
        proxy.close()
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert (
        line.startswith("error: triggering ssh-exec: the job's input is 524")
        and " bytes, over the 4194304" in line
    )
    assert line.endswith("run it on the local engine (--engine local)") and out == ""
    assert engine.runs == {} and jobs(tmp_path) == []


PING_OUTPUTS = {
    "check-engine": {"message": "ping", "host": "h", "pid": 1, "python": "3.11", "attempt": 1},
    "check-journal": {
        "message": "ping",
        "journal": "j",
        "job_recorded": True,
        "job_state": None,
        "held_seconds": 0,
    },
    "write-artifact": {"message": "ping", "path": "p", "size_bytes": 1, "sha256": "0" * 64},
}


def completed(answer: w1.GetRunDetailsResponse, output: bytes | None = None) -> None:
    """The run COMPLETED, each task with `output` (else a valid one)."""
    answer.status, answer.done = w1.RunStatus.COMPLETED, True
    for name, task in answer.task_runs.items():
        task.status = w1.RunStatus.COMPLETED
        task.output = json.dumps(PING_OUTPUTS[name]).encode() if output is None else output


def done_unknown_status(answer: w1.GetRunDetailsResponse) -> None:
    answer.status, answer.done = 77, True  # type: ignore[assignment]
    for task in answer.task_runs.values():
        task.status = 77  # type: ignore[assignment]


def extra_task(answer: w1.GetRunDetailsResponse) -> None:
    completed(answer)
    answer.task_runs["no-such-step"].CopyFrom(
        w1.TaskRunDetail(
            external_id="x", status=w1.RunStatus.COMPLETED, output=b"{}", readable_id="no-such-step"
        )
    )


def without_check_engine(answer: w1.GetRunDetailsResponse) -> None:
    completed(answer)
    del answer.task_runs["check-engine"]


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        (done_unknown_status, "the run is done with status 77, unknown here"),
        (lambda answer: completed(answer, b"\xff\xfe{not json"), "'s output is not JSON ("),
        (lambda answer: completed(answer, b"[1,2,3]"), "'s output does not fit "),
        (extra_task, "task 'no-such-step' is no step of workflow ping"),
        (without_check_engine, "the run is COMPLETED without the output of step check-engine"),
    ],
    ids=[
        "done-unknown-status",
        "output-not-json",
        "output-wrong-type",
        "task-not-in-workflow",
        "step-missing",
    ],
)
def test_an_answer_the_cli_cannot_use_is_one_line_and_the_job_stays_as_recorded(
    engine: FakeHatchet, tmp_path: Path, fault: Callable[[w1.GetRunDetailsResponse], None], problem: str
) -> None:
    env = world(engine, tmp_path)
    engine.details_hook = fault
    code, out, err, _took = cli(env, "run", "ping", "--engine", "hatchet")
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert (
        line.startswith("error: run ") and f": unusable answer from Hatchet at {engine.host_port}: " in line
    )
    assert problem in line, line
    [(job_id, state)] = jobs(tmp_path)
    assert state == "queued"  # as last recorded: not succeeded, not failed

    code, out, err, _took = cli(env, "jobs", "list")
    assert code == 0 and "Traceback" not in err, err
    assert err.count(f"note: could not refresh job {job_id} from Hatchet: run ") == 1 and problem in err, err
    assert job_id in out and "queued" in out
    assert jobs(tmp_path) == [(job_id, "queued")]


def test_a_status_unknown_here_on_an_unfinished_run_is_not_finished(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    """A newer engine's status (EVICTED, or one not even the SDK knows): the job stays as it is,
    and a command following the run goes on following it until it ends."""
    env = world(engine, tmp_path)
    left = {"unknown": 1_000_000}  # answers with statuses unknown here, before the run ends (cancelled)

    def newer_engine(answer: w1.GetRunDetailsResponse) -> None:
        ended = left["unknown"] <= 0
        left["unknown"] -= 1
        answer.status = w1.RunStatus.CANCELLED if ended else 77  # type: ignore[assignment]
        answer.done = ended
        for task in answer.task_runs.values():
            task.status = w1.RunStatus.CANCELLED if ended else 77  # type: ignore[assignment]
        if not ended:
            answer.task_runs["check-engine"].status = w1.RunStatus.EVICTED

    engine.details_hook = newer_engine
    code, out, err, _took = cli(env, "run", "ping", "--engine", "hatchet", "--no-wait")
    assert code == 0, err
    [(job_id, _state)] = jobs(tmp_path)
    for command in (["jobs", "list"], ["jobs", "show", job_id]):
        code, out, err, _took = cli(env, *command)
        assert code == 0 and err == "", err
        assert job_id in out and "queued" in out
    assert jobs(tmp_path) == [(job_id, "queued")]

    left["unknown"] = 4
    code, out, err, _took = cli(env, "run", "ping", "--engine", "hatchet")
    assert code == 130 and "Traceback" not in err, err
    assert "check-engine: running" in err and left["unknown"] < 0
