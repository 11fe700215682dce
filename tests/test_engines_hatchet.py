"""The Hatchet adapter without an engine: compilation to the SDK's workflow proto, and every task run
with the SDK's `aio_mock_run` (model instances in, a real journal and artifact folder on disk)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fake_hatchet import make_token
from pydantic import BaseModel

from win_automation.config import Config, load_config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.hatchet.client import TaskFailed, compile_workflow, connect
from win_automation.engines.hatchet.runtime import TaskRuntime, parse_failure
from win_automation.errors import AuthError, Cancelled, ConnectError
from win_automation.jobs.ids import new_job_id
from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState
from workflows.ping import ArtifactCheck, EngineCheck, JournalCheck, PingInput, ping


class In(BaseModel):
    n: int = 0


class Out(BaseModel):
    n: int


def first(inp: In, ctx: StepContext) -> Out:
    return Out(n=inp.n + 1)


def double(inp: In, ctx: StepContext) -> Out:
    return Out(n=ctx.parent("first", Out).n * 2)


def auth_fails(inp: In, ctx: StepContext) -> Out:
    raise AuthError("ssh: authentication failed for administrator@vm")


def connect_fails(inp: In, ctx: StepContext) -> Out:
    raise ConnectError("ssh: connection refused by vm:22555")


STOPPED = threading.Event()


def waits_for_cancel(inp: In, ctx: StepContext) -> Out:
    deadline = time.monotonic() + 20
    while not ctx.cancelled() and time.monotonic() < deadline:
        time.sleep(0.01)
    STOPPED.set()
    raise Cancelled("stopped at a safe point")


unit = Workflow(
    name="unit-flow",
    input=In,
    steps=(
        Step("first", first, Out),
        Step("double", double, Out, parents=("first",), retries=2, backoff_seconds=0.5, timeout_seconds=12.5),
        Step("auth", auth_fails, Out, retries=3),
        Step("flaky", connect_fails, Out, retries=1),
        Step("slow", waits_for_cancel, Out),
    ),
)
gui = Workflow(name="gui-flow", input=In, steps=(Step("only", first, Out),), gui=True, labels={"vm": "win11"})


@pytest.fixture
def config(tmp_path: Path) -> Config:
    env = {
        "HATCHET_CLIENT_TOKEN": make_token("http://127.0.0.1:1", "127.0.0.1:2"),
        "HATCHET_CLIENT_HOST_PORT": "127.0.0.1:2",
        "WIN_AUTOMATION_DATA_DIR": str(tmp_path / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(tmp_path / "artifacts"),
    }
    return load_config(environ=env).config


@pytest.fixture
def runtime(config: Config) -> Any:
    rt = TaskRuntime(config)
    yield rt
    rt.close()


def compiled(config: Config, workflow: Workflow, runtime: TaskRuntime) -> Any:
    return compile_workflow(connect(config), workflow, lambda: runtime)


def task(hwf: Any, name: str) -> Any:
    return next(t for t in hwf.tasks if t.name == name)


def journal(config: Config) -> Journal:
    return Journal.open(config.data.dir, recover=False)


def test_each_step_becomes_one_task_with_its_parents_retries_backoff_and_timeout(
    config: Config, runtime: TaskRuntime
) -> None:
    proto = compiled(config, unit, runtime).to_proto()
    tasks = {t.readable_id: t for t in proto.tasks}
    assert list(tasks) == ["first", "double", "auth", "flaky", "slow"]
    assert list(tasks["double"].parents) == ["first"]
    assert tasks["double"].retries == 2
    assert tasks["double"].backoff_factor == 2.0 and tasks["double"].backoff_max_seconds == 1
    assert tasks["double"].timeout == "43s"  # the step's own 13 s deadline + the engine's 30 s backstop
    assert tasks["first"].schedule_timeout == "24h"
    assert tasks["first"].retries == 0 and not tasks["first"].HasField("backoff_factor")
    assert tasks["double"].action == "unit-flow:double"
    assert not proto.HasField("concurrency") and not tasks["first"].worker_labels


def test_a_gui_workflow_runs_one_at_a_time_per_vm_on_workers_with_its_labels(
    config: Config, runtime: TaskRuntime
) -> None:
    proto = compiled(config, gui, runtime).to_proto()
    assert proto.concurrency.expression == "additional_metadata.vm"
    assert proto.concurrency.max_runs == 1
    label = proto.tasks[0].worker_labels["vm"]
    assert label.str_value == "win11" and label.required


def test_a_hatchet_gui_step_waits_while_a_local_gui_job_holds_the_same_vm_desktop(
    config: Config, runtime: TaskRuntime
) -> None:
    from win_automation.jobs.locks import vm_lock

    hwf = compiled(config, gui, runtime)
    done = threading.Event()

    def run() -> None:
        asyncio.run(
            task(hwf, "only").aio_mock_run(input=In(n=1), additional_metadata={"job_id": new_job_id()})
        )
        done.set()

    with vm_lock(config.data.dir, config.ssh.vm_key):  # what a local GUI job on this host holds
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert not done.wait(0.6), "the Hatchet GUI step ran while the desktop was held"
    assert done.wait(10), "the Hatchet GUI step never ran once the desktop was free"


def test_the_namespace_prefixes_workflow_names(tmp_path: Path) -> None:
    env = {
        "HATCHET_CLIENT_TOKEN": make_token("http://127.0.0.1:1", "127.0.0.1:2"),
        "HATCHET_CLIENT_NAMESPACE": "lab",
        "WIN_AUTOMATION_DATA_DIR": str(tmp_path),
    }
    config = load_config(environ=env).config
    rt = TaskRuntime(config)
    try:
        assert compiled(config, unit, rt).to_proto().name == "lab_unit-flow"
    finally:
        rt.close()


def test_every_ping_task_runs_with_mock_run_and_is_journaled(config: Config, runtime: TaskRuntime) -> None:
    hwf = compiled(config, ping, runtime)
    job_id = new_job_id()
    meta = {"job_id": job_id, "trace_id": "0" * 32}
    inp = PingInput(message="unit")
    engine = asyncio.run(task(hwf, "check-engine").aio_mock_run(input=inp, additional_metadata=meta))
    assert isinstance(engine, EngineCheck) and engine.message == "unit" and engine.attempt == 1
    parents: dict[str, Any] = {"check-engine": engine.model_dump()}
    checked = asyncio.run(
        task(hwf, "check-journal").aio_mock_run(input=inp, additional_metadata=meta, parent_outputs=parents)
    )
    assert isinstance(checked, JournalCheck) and (checked.job_recorded, checked.job_state) == (
        True,
        "running",
    )
    written = asyncio.run(
        task(hwf, "write-artifact").aio_mock_run(
            input=inp, additional_metadata=meta, parent_outputs={"check-journal": checked.model_dump()}
        )
    )
    assert isinstance(written, ArtifactCheck) and written.path == "ping.json" and len(written.sha256) == 64
    with journal(config) as j:
        job = j.get_job(job_id)
        assert (job.engine, job.state.value, job.trace_id) == ("hatchet", "succeeded", "0" * 32)
        assert [(s.name, s.state.value) for s in j.steps(job_id)] == [
            ("check-engine", "succeeded"),
            ("check-journal", "succeeded"),
            ("write-artifact", "succeeded"),
        ]
    body = json.loads((config.artifacts.out_dir / job_id / "ping.json").read_text())
    assert body["job_id"] == job_id


def test_unit_tasks_pass_parent_outputs_as_models(config: Config, runtime: TaskRuntime) -> None:
    hwf = compiled(config, unit, runtime)
    out = asyncio.run(task(hwf, "first").aio_mock_run(input=In(n=20)))
    assert out == Out(n=21)
    doubled = asyncio.run(task(hwf, "double").aio_mock_run(input=In(), parent_outputs={"first": {"n": 21}}))
    assert doubled == Out(n=42)


def test_a_non_transient_error_is_non_retryable_and_carries_its_exit_code(
    config: Config, runtime: TaskRuntime
) -> None:
    from hatchet_sdk import NonRetryableException

    hwf = compiled(config, unit, runtime)
    job_id = new_job_id()
    with pytest.raises(NonRetryableException) as caught:
        asyncio.run(task(hwf, "auth").aio_mock_run(input=In(), additional_metadata={"job_id": job_id}))
    assert parse_failure(f"NonRetryableException: {caught.value}") == (
        "ssh: authentication failed for administrator@vm",
        4,
    )
    with journal(config) as j:
        job = j.get_job(job_id)
        step = next(s for s in j.steps(job_id) if s.name == "auth")
        # the other branches (first, flaky, slow) are independent: the engine still runs them, so
        # the job ends only when they have
        assert job.state.value == "running"
        assert (step.state.value, step.error_code) == ("failed", 4)
        for other in ("flaky", "slow", "first", "double"):
            j.step_finished(job_id, other, JobState.SKIPPED, output_json="{}")
        j.end_job(job_id)
        job = j.get_job(job_id)
    assert (job.state.value, job.error_code, job.error) == (
        "failed",
        4,
        "step auth: ssh: authentication failed for administrator@vm",
    )


def test_a_transient_error_is_left_to_the_engine_to_retry_until_the_last_attempt(
    config: Config, runtime: TaskRuntime
) -> None:
    hwf = compiled(config, unit, runtime)
    job_id = new_job_id()
    meta = {"job_id": job_id}
    with pytest.raises(TaskFailed, match=r"connection refused .*\[exit 3\]"):
        asyncio.run(task(hwf, "flaky").aio_mock_run(input=In(), additional_metadata=meta, retry_count=0))
    with journal(config) as j:
        assert j.get_job(job_id).state.value == "running"
        assert next(s for s in j.steps(job_id) if s.name == "flaky").state.value == "running"
    with pytest.raises(TaskFailed):
        asyncio.run(task(hwf, "flaky").aio_mock_run(input=In(), additional_metadata=meta, retry_count=1))
    with journal(config) as j:
        step = next(s for s in j.steps(job_id) if s.name == "flaky")
        assert (step.state.value, step.attempts, step.error_code) == ("failed", 2, 3)
        assert j.get_job(job_id).state.value == "running"  # independent branches still to run


def test_cancellation_reaches_the_running_step(config: Config, runtime: TaskRuntime) -> None:
    hwf = compiled(config, unit, runtime)
    job_id = new_job_id()
    STOPPED.clear()

    async def run_then_cancel() -> None:
        running = asyncio.create_task(
            task(hwf, "slow").aio_mock_run(input=In(), additional_metadata={"job_id": job_id})
        )
        await asyncio.sleep(0.3)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    started = time.monotonic()
    asyncio.run(run_then_cancel())
    assert STOPPED.wait(5), "the step never saw ctx.cancelled()"
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with journal(config) as j:
            if j.get_job(job_id).state.value == "cancelled":
                break
        time.sleep(0.05)
    with journal(config) as j:
        assert j.get_job(job_id).state.value == "cancelled"
        assert next(s for s in j.steps(job_id) if s.name == "slow").state.value == "cancelled"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NonRetryableException: ssh: auth failed [exit 4]\nTraceback...", ("ssh: auth failed", 4)),
        ("TaskFailed: boom [exit 3]", ("boom", 3)),
        ("RuntimeError: no code here", ("no code here", 1)),
        ("", ("the step failed", 1)),
    ],
)
def test_parse_failure(text: str, expected: tuple[str, int]) -> None:
    assert parse_failure(text) == expected


def test_retention_prunes_old_job_folders_but_keeps_active_jobs(config: Config, runtime: TaskRuntime) -> None:
    import os

    from win_automation.artifacts.retention import scheduled_retention

    old, active = new_job_id(now=time.time() - 30 * 86400), new_job_id(now=time.time() - 30 * 86400)
    for job_id in (old, active):
        folder = config.artifacts.out_dir / job_id
        folder.mkdir(parents=True)
        (folder / "stdout.txt").write_text("x")
        os.utime(folder, (time.time() - 30 * 86400, time.time() - 30 * 86400))
    runtime.journal.create_job("ping", "{}", steps=["check-engine"], engine="hatchet", job_id=active)
    assert scheduled_retention(config) == (1, 0)
    assert not (config.artifacts.out_dir / old).exists() and (config.artifacts.out_dir / active).exists()
    keep_all = config.model_copy(
        update={"artifacts": config.artifacts.model_copy(update={"retention_days": 0})}
    )
    assert scheduled_retention(keep_all) == (0, 0)


def test_trigger_wait_and_cancel_on_an_engine_with_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_hatchet import FakeHatchet

    from win_automation.engines.hatchet import runs as adapter

    monkeypatch.setattr(adapter, "NO_WORKER_HINT_SECONDS", 0.3)
    engine = FakeHatchet().start()
    env = {**engine.env(), "WIN_AUTOMATION_DATA_DIR": str(tmp_path / "data")}
    config = load_config(environ=env).config
    # the engine knows the workflow once a worker registered it; here the test registers it
    engine.put_workflow(compiled(config, ping, TaskRuntime(config)).to_proto())
    runs = adapter.HatchetRuns(config)
    try:
        job_id, run_id = runs.submit(ping, PingInput(message="nobody"))
        job = runs.journal.get_job(job_id)
        assert (job.engine, job.external_id, job.state.value) == ("hatchet", run_id, "queued")
        assert engine.runs[run_id].metadata["job_id"] == job_id
        seen: list[tuple[str, str]] = []
        cancelled = threading.Timer(1.0, runs.cancel, args=(run_id,))
        cancelled.start()
        outcome = runs.wait(ping, job_id, run_id, progress=lambda step, state: seen.append((step, state)))
        assert ("*", "still queued: no worker has taken it (is `win-automation worker` running?)") in seen
        assert outcome.state.value == "cancelled" and outcome.exit_code == 130
        assert runs.journal.get_job(job_id).state.value == "cancelled"
        assert {s.state.value for s in runs.journal.steps(job_id)} == {"cancelled"}
    finally:
        runs.close()
        engine.stop()


def test_every_ssh_exec_task_runs_with_mock_run_against_the_real_sshd(
    tmp_path: Path, live_sshd: Any, known_hosts: Path
) -> None:
    from workflows.ssh_exec import CheckOutput, ExecOutput, SshExecInput, ssh_exec

    env = {
        "HATCHET_CLIENT_TOKEN": make_token("http://127.0.0.1:1", "127.0.0.1:2"),
        "WIN_AUTOMATION_DATA_DIR": str(tmp_path / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(tmp_path / "artifacts"),
        **live_sshd.env(known_hosts),
    }
    config = load_config(environ=env).config
    rt = TaskRuntime(config)
    try:
        hwf = compiled(config, ssh_exec, rt)
        job_id = new_job_id()
        inp = SshExecInput(command="Write-Output mocked", check="exit 1")
        checked = asyncio.run(
            task(hwf, "check").aio_mock_run(input=inp, additional_metadata={"job_id": job_id})
        )
        assert checked == CheckOutput(checked=True, passed=False, exit_code=1)
        result = asyncio.run(
            task(hwf, "exec").aio_mock_run(
                input=inp,
                additional_metadata={"job_id": job_id},
                parent_outputs={"check": checked.model_dump()},
            )
        )
        assert (
            isinstance(result, ExecOutput)
            and result.exit_code == 0
            and "Write-Output mocked" in result.stdout
        )
        assert "Write-Output mocked" in (config.artifacts.out_dir / job_id / "stdout.txt").read_text()
        with journal(config) as j:
            assert j.get_job(job_id).state.value == "succeeded"
        # an idempotency check that passes: `exec` raises Skipped, the task returns its result
        skip_id = new_job_id()
        done = SshExecInput(command="Write-Output again", check="exit 0")
        passed = asyncio.run(
            task(hwf, "check").aio_mock_run(input=done, additional_metadata={"job_id": skip_id})
        )
        skipped = asyncio.run(
            task(hwf, "exec").aio_mock_run(
                input=done,
                additional_metadata={"job_id": skip_id},
                parent_outputs={"check": passed.model_dump()},
            )
        )
        assert isinstance(skipped, ExecOutput) and skipped.skipped and skipped.exit_code == 0
        with journal(config) as j:
            assert j.get_job(skip_id).state.value == "skipped"
            assert [(s.name, s.state.value) for s in j.steps(skip_id)] == [
                ("check", "succeeded"),
                ("exec", "skipped"),
            ]
    finally:
        rt.close()


@pytest.mark.parametrize(
    "after",
    [
        "from hatchet_sdk import Hatchet",  # a name read from the package
        "from hatchet_sdk.hatchet import Hatchet",  # a module that reads names from the package as it loads
        "from hatchet_sdk.clients.rest import WorkflowApi",
    ],
)
def test_the_sdk_imports_as_usual_after_its_start_up_was_deferred(after: str) -> None:
    """win_automation.engines.hatchet defers the package's start-up: whatever comes next gets the
    SDK as a plain import gives it, each module loaded once (`hatchet_sdk.hatchet` was an
    ImportError: it read a name from a package whose start-up then imported it again)."""
    import subprocess
    import sys

    code = (
        "import win_automation.engines.hatchet.runs, sys\n"
        "assert 'hatchet_sdk.clients' not in sys.modules\n"
        f"{after}\n"
        "import hatchet_sdk, hatchet_sdk.hatchet as h\n"
        "assert hatchet_sdk.Hatchet is h.Hatchet and h.__spec__.origin.endswith('hatchet.py')\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr


def test_the_rest_clients_validators_built_at_first_call_validate_as_before() -> None:
    """The deferred start-up builds the REST client's validators at their first call: a bad
    argument is still refused before any request, a good one passes validation, and
    pydantic.validate_call is pydantic's own again afterwards (for the process's own code)."""
    import subprocess
    import sys

    code = (
        "import win_automation.engines.hatchet, pydantic\n"
        "from pydantic.validate_call_decorator import validate_call\n"
        "from hatchet_sdk.clients.rest import WorkflowApi\n"
        "assert pydantic.validate_call is validate_call\n"
        "api = WorkflowApi()\n"
        "for bad in (1, 'short'):\n"
        "    try:\n"
        "        api.workflow_get(workflow=bad)\n"
        "    except pydantic.ValidationError as e:\n"
        "        assert e.errors()[0]['loc'] == ('workflow',), e\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
        "api.api_client.configuration.host = 'http://127.0.0.1:9'\n"  # discard: refused at once
        "try:\n"
        "    api.workflow_get(workflow='0' * 36, _request_timeout=2)\n"
        "except pydantic.ValidationError as e:\n"
        "    raise AssertionError(e)\n"
        "except Exception as e:\n"
        "    print('sent', type(e).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("sent "), run.stderr
