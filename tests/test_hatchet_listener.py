"""The worker when the Hatchet SDK's action listener (its gRPC side, in a subprocess) fails, and
its forced exit on a second SIGTERM, each on a fake engine of its own.

Before: an engine that refused the worker's registration left a traceback (the SDK's subprocess
crashed) and the worker exited 0 some 11 s later, so a supervisor would not restart it; a token
refused while it ran (revoked) was logged at each heartbeat, for good; a listener that died
(killed) hung the worker for good (the SDK's shutdown waited on the dead process's event), and
during a drain it waited out the grace (exit 1), or exited 0 if the steps were done. And a second
SIGTERM left multiprocessing's `leaked semaphore objects` warning on stderr.

Each worker here has a pipe for stdout and stderr: `communicate` returns once every process that
holds them has ended (the listener, multiprocessing's resource tracker), so what they print after
the worker's exit is read too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from fixture_hatchet import world_env

from win_automation.jobs.ids import new_job_id

if TYPE_CHECKING:
    from fake_hatchet import FakeHatchet

pytestmark = pytest.mark.slow
EXIT_WITHIN = 60.0  # generous: two cores, other tests running


@pytest.fixture
def engine() -> Iterator[FakeHatchet]:
    from fake_hatchet import FakeHatchet

    engine = FakeHatchet().start()
    yield engine
    engine.stop()


def start_worker(engine: FakeHatchet, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.Popen(  # the installed command, as users (and systemd) run it
        [str(Path(sys.executable).parent / "win-automation"), "worker", "--name", name, "--grace", "60s"],
        env=world_env(engine, tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_listening(engine: FakeHatchet, proc: subprocess.Popen[str], name: str) -> str:
    deadline = time.monotonic() + EXIT_WITHIN
    while True:
        ids = [w.id for w in list(engine.workers.values()) if w.name == name and w.listening]
        if ids:
            return ids[0]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker {name} did not start listening: {proc.communicate()}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """The worker's exit code and stderr, once it and every process holding its pipes ended."""
    try:
        _out, err = proc.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the worker did not end within {EXIT_WITHIN:g}s:\n{err[-3000:]}") from None
    return proc.returncode, err


def listener_pid(worker_pid: int) -> int:
    """The SDK's listener: the worker's child that multiprocessing's spawn started."""
    for proc in Path("/proc").iterdir():
        try:
            if (
                not proc.name.isdigit()
                or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != worker_pid
            ):
                continue
            if b"multiprocessing.spawn" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    raise AssertionError(f"no listener subprocess under {worker_pid}")


def assert_one_clean_error(err: str, engine: FakeHatchet, line: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1] == line and [x for x in lines if x.startswith("error: ")] == [line], err[-3000:]
    assert "Traceback" not in err and "leaked semaphore" not in err, err[-3000:]
    assert engine.token not in err


def killed_line(pid: int) -> str:
    """The worker's one error line for a listener (`pid`) killed outright."""
    return (
        f"error: the worker's action listener (the Hatchet SDK's subprocess, pid {pid}) was killed by SIGKILL"
    )


@pytest.mark.parametrize(
    ("status", "code", "what"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 4, "the token (UNAUTHENTICATED)"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3, "the worker (RESOURCE_EXHAUSTED)"),  # a worker limit
    ],
)
def test_an_engine_that_refuses_the_workers_registration_ends_it_non_zero(
    engine: FakeHatchet, tmp_path: Path, status: grpc.StatusCode, code: int, what: str
) -> None:
    engine.refused["Register"] = status
    proc = start_worker(engine, tmp_path, "refused")
    started = time.monotonic()
    exit_code, err = finish(proc)
    assert exit_code == code, err[-3000:]
    assert time.monotonic() - started < 30
    assert "could not start action listener" in err  # the SDK's own line, with the engine's answer
    assert_one_clean_error(
        err,
        engine,
        f"error: the worker's action listener stopped: Hatchet at {engine.host_port} refused {what}",
    )
    assert engine.workers == {}


def test_a_token_refused_while_the_worker_runs_ends_it_with_exit_4(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    """The token is revoked: the engine closes the worker's stream and refuses it from then on."""
    proc = start_worker(engine, tmp_path, "revoked")
    wait_listening(engine, proc, "revoked")
    engine.refused.update(ListenV2=grpc.StatusCode.UNAUTHENTICATED, Heartbeat=grpc.StatusCode.UNAUTHENTICATED)
    exit_code, err = finish(proc)
    assert exit_code == 4, err[-3000:]
    assert_one_clean_error(
        err,
        engine,
        f"error: the worker's action listener stopped: Hatchet at {engine.host_port} refused the token"
        " (UNAUTHENTICATED)",
    )


def test_a_killed_listener_ends_the_worker_with_exit_3(engine: FakeHatchet, tmp_path: Path) -> None:
    proc = start_worker(engine, tmp_path, "orphaned")
    wait_listening(engine, proc, "orphaned")
    pid = listener_pid(proc.pid)
    os.kill(pid, signal.SIGKILL)
    exit_code, err = finish(proc)
    assert exit_code == 3, err[-3000:]
    assert_one_clean_error(
        err,
        engine,
        killed_line(pid),
    )


def test_a_second_sigterm_exits_1_at_once_without_a_leaked_semaphore_warning(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    proc = start_worker(engine, tmp_path, "twice")
    worker_id = wait_listening(engine, proc, "twice")
    run_id = engine.trigger("ping", {"message": "held", "hold_seconds": 120}, {"job_id": new_job_id()})
    engine.wait_until(lambda: engine.runs[run_id].tasks["check-journal"].status == "RUNNING", what="hold")
    proc.send_signal(signal.SIGTERM)
    engine.wait_until(lambda: worker_id in engine.paused_via_rest, what="the drain to pause the worker")
    proc.send_signal(signal.SIGTERM)
    exit_code, err = finish(proc)
    assert exit_code == 1, err[-3000:]
    assert "second signal: leaving running steps to the engine" in err
    assert "leaked semaphore" not in err and "resource_tracker" not in err, err[-3000:]
    assert "Traceback" not in err and engine.token not in err
    engine.cancel([run_id])


def test_a_listener_killed_during_a_drain_ends_the_worker_with_exit_3_at_once(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    """Before: the drain waited for good for the held step's result, which no process could send
    any more, until the grace (60 s) ended the worker with exit 1 and a misleading line."""
    proc = start_worker(engine, tmp_path, "drained")
    wait_listening(engine, proc, "drained")
    run_id = engine.trigger("ping", {"message": "held", "hold_seconds": 120}, {"job_id": new_job_id()})
    engine.wait_until(lambda: engine.runs[run_id].tasks["check-journal"].status == "RUNNING", what="hold")
    pid = listener_pid(proc.pid)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)  # the drain has begun: the step is running, the listener waits for its result
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    exit_code, err = finish(proc)
    assert exit_code == 3, err[-3000:]
    assert time.monotonic() - killed < 30  # at once, not after the grace (60 s) or the step (120 s)
    assert "draining: no new steps" in err and "grace period over" not in err
    assert_one_clean_error(
        err,
        engine,
        killed_line(pid),
    )
    # left to the engine, as after --grace: it takes the step back when the heartbeats stop
    engine.wait_until(
        lambda: engine.runs[run_id].tasks["check-journal"].status == "QUEUED",
        timeout=EXIT_WITHIN,
        what="the engine to take back the step of the dead worker",
    )
    engine.cancel([run_id])


def test_a_listener_killed_after_the_drain_while_it_sends_the_last_result_is_not_exit_0(
    engine: FakeHatchet, tmp_path: Path
) -> None:
    """The SDK returns once the running steps are done; its listener still sends their results
    (here the engine holds that call) before it ends. Before: a kill then was exit 0."""
    proc = start_worker(engine, tmp_path, "last")
    lines: list[str] = []
    output = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    output.start()  # read as it comes: the test acts on a line of the worker
    wait_listening(engine, proc, "last")
    engine.trigger("ping", {"message": "held", "hold_seconds": 2}, {"job_id": new_job_id()})
    engine.wait_until(
        lambda: any(e.task == "check-journal" and e.type == "STARTED" for e in engine.events),
        what="the held step to start",
    )
    engine.stalled.add("SendStepActionEvent")
    pid = listener_pid(proc.pid)
    proc.send_signal(signal.SIGTERM)
    with proc:  # closes its pipes
        try:
            deadline = time.monotonic() + EXIT_WITHIN
            while not any("drained: the action listener sends the last results" in x for x in lines):
                assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            exit_code = proc.wait(EXIT_WITHIN)
        finally:
            proc.kill()
            output.join(EXIT_WITHIN)
    err = "".join(lines)
    assert exit_code == 3, err[-3000:]
    assert_one_clean_error(
        err,
        engine,
        killed_line(pid),
    )
    engine.stalled.clear()
