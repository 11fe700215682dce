"""A small fake Hatchet engine for the tests, served over real gRPC on loopback.

It is built on the SDK's own generated stubs (`hatchet_sdk.contracts`) and answers what a worker
and a client call: `v1.AdminService/PutWorkflow`, `GetRunDetails`, `CancelTasks`,
`TriggerWorkflowRun`; `WorkflowService/TriggerWorkflow`; `Dispatcher/GetVersion`, `Register`,
`ListenV2` (the stream of `AssignedAction`s), `Heartbeat`, `SendStepActionEvent`, `Unsubscribe`
and `SubscribeToWorkflowRuns` (a finished run is replayed to a late subscriber).

What it does as an engine: it resolves the DAG (a task is assignable once its parents completed,
their outputs go into the action payload under `parents`), assigns to a registered worker with
the action, a free slot and the required labels, honours a workflow's concurrency key
(`input.x` / `additional_metadata.x` paths, `max_runs`), retries a FAILED task with
`retry_count + 1` up to its `retries` (backoff `min(factor ** n, max)` seconds) unless the event
says `should_not_retry`, fails a task that overruns its execution timeout, sends
`CANCEL_STEP_RUN` for cancelled running tasks and requeues the running tasks of a worker that
unsubscribed or stopped heart-beating. It keeps each workflow's cron schedules (`cron_triggers`)
and fires one on request (`fire_cron`: a run with the cron input). A plain HTTP server next to it
answers `/live`, `/ready`, `/version` (the hatchet-lite health port) and the REST call a draining
worker makes to pause.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from queue import Queue
from typing import Any

import grpc
from fake_hatchet_rpc import TENANT_ID, add_services, health_handler
from hatchet_sdk.contracts import dispatcher_pb2 as d
from hatchet_sdk.contracts.v1 import workflows_pb2 as w1

ENGINE_VERSION = "v0.80.0"

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
_EVENT_NAMES = {
    d.STEP_EVENT_TYPE_STARTED: "STARTED",
    d.STEP_EVENT_TYPE_COMPLETED: "COMPLETED",
    d.STEP_EVENT_TYPE_FAILED: "FAILED",
    d.STEP_EVENT_TYPE_ACKNOWLEDGED: "ACKNOWLEDGED",
    d.STEP_EVENT_TYPE_CANCELLED: "CANCELLED",
}


def make_token(server_url: str, grpc_address: str, tenant: str = TENANT_ID) -> str:
    """An unsigned JWT with the claims the SDK reads: sub, server_url, grpc_broadcast_address."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": tenant, "server_url": server_url, "grpc_broadcast_address": grpc_address}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


def _seconds(expr: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if not expr:
        return 60.0
    return float(expr[:-1]) * units[expr[-1]] if expr[-1] in units else float(expr)


@dataclass
class TaskDef:
    readable_id: str
    action: str
    parents: list[str]
    retries: int
    timeout: float
    backoff_factor: float
    backoff_max: int
    labels: dict[str, str | int]


@dataclass
class WorkflowDef:
    name: str
    tasks: dict[str, TaskDef]
    concurrency: list[tuple[str, int]]
    crons: list[str] = field(default_factory=list)
    cron_input: dict[str, Any] = field(default_factory=dict)


@dataclass
class Worker:
    id: str
    name: str
    actions: set[str]
    slots: int
    labels: dict[str, str | int]
    queue: Queue[d.AssignedAction | None] = field(default_factory=Queue)
    listening: bool = False
    paused: bool = False
    gone: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)
    running: set[str] = field(default_factory=set)


@dataclass
class TaskRun:
    id: str
    run_id: str
    spec: TaskDef
    status: str = QUEUED
    retry_count: int = 0
    ready_at: float = 0.0
    started_at: float = 0.0
    worker_id: str = ""
    output: Any = None
    error: str = ""


@dataclass
class Run:
    id: str
    workflow: WorkflowDef
    input: dict[str, Any]
    metadata: dict[str, Any]
    tasks: dict[str, TaskRun]
    status: str = QUEUED
    active: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Event:
    task_run_id: str
    task: str
    type: str
    retry_count: int
    accepted: bool
    payload: str
    should_not_retry: bool = False


class FakeHatchet:
    """The engine's state, its gRPC services and its health server; `start()` then use, `stop()`."""

    def __init__(self, *, worker_timeout: float = 6.0, version: str = ENGINE_VERSION) -> None:
        self.version = version
        self.worker_timeout = worker_timeout
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.workflows: dict[str, WorkflowDef] = {}
        self.workers: dict[str, Worker] = {}
        self.runs: dict[str, Run] = {}
        self.task_index: dict[str, TaskRun] = {}
        self.events: list[Event] = []
        self.assignments: list[tuple[str, str, int]] = []  # (task run id, task, retry_count)
        self.subscribers: list[tuple[set[str], Queue[d.WorkflowRunEvent | None]]] = []
        self.paused_via_rest: list[str] = []
        self.stalled: set[str] = set()  # RPC names that get no answer (a wedged engine) while listed
        # RPC names refused with a status while listed (Register, ListenV2, Heartbeat: a revoked
        # token, an engine that turns the worker away); a ListenV2 stream open when listed is closed
        self.refused: dict[str, grpc.StatusCode] = {}
        # alters each GetRunDetails answer in place before it is sent (a faulty or newer engine)
        self.details_hook: Callable[[w1.GetRunDetailsResponse], None] | None = None
        self._stop = threading.Event()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64),
            options=[  # accept the SDK's 10 s keepalive pings, as the real engine does
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        add_services(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), health_handler(self))
        self.http.daemon_threads = True
        self.http_port = self.http.server_address[1]
        self.token = make_token(f"http://127.0.0.1:{self.http_port}", self.host_port)
        self._threads = [
            threading.Thread(target=self._scheduler, daemon=True),
            threading.Thread(target=self._reaper, daemon=True),
            threading.Thread(target=self.http.serve_forever, daemon=True),
        ]

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """What a worker or a client needs in its environment to reach this engine."""
        return {
            "HATCHET_CLIENT_TOKEN": self.token,
            "HATCHET_CLIENT_HOST_PORT": self.host_port,
            "HATCHET_CLIENT_TLS_STRATEGY": "none",
        }

    def start(self) -> FakeHatchet:
        self.server.start()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            for worker in self.workers.values():
                worker.queue.put(None)
            for _, queue in self.subscribers:
                queue.put(None)
            self.changed.notify_all()
        self.server.stop(grace=0.5).wait()
        self.http.shutdown()
        self.http.server_close()

    # ---- what the tests look at -------------------------------------------------------------

    def wait_for_worker(self, timeout: float = 30.0) -> Worker:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                live = [w for w in self.workers.values() if w.listening and not w.gone]
                if live:
                    return live[0]
                if not self.changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("no worker registered and listening")

    def wait_run(self, run_id: str, timeout: float = 60.0) -> Run:
        run = self.runs[run_id]
        if not run.done.wait(timeout):
            raise TimeoutError(f"run {run_id} not finished: {self.describe(run_id)}")
        return run

    def wait_until(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                self.changed.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                if time.monotonic() > deadline and not predicate():
                    raise TimeoutError(f"timed out waiting for {what}")

    def describe(self, run_id: str) -> dict[str, Any]:
        with self.lock:
            run = self.runs[run_id]
            return {name: (t.status, t.retry_count, t.error[:200]) for name, t in run.tasks.items()}

    def task_events(self, run_id: str, task: str) -> list[Event]:
        with self.lock:
            task_id = self.runs[run_id].tasks[task].id
            return [e for e in self.events if e.task_run_id == task_id]

    # ---- engine logic -----------------------------------------------------------------------

    def put_workflow(self, req: w1.CreateWorkflowVersionRequest) -> WorkflowDef:
        tasks = {}
        for t in req.tasks:
            labels = {
                key: (lab.str_value if lab.HasField("str_value") else lab.int_value)
                for key, lab in t.worker_labels.items()
                if lab.required
            }
            tasks[t.readable_id] = TaskDef(
                readable_id=t.readable_id,
                action=t.action,
                parents=list(t.parents),
                retries=t.retries,
                timeout=_seconds(t.timeout),
                backoff_factor=t.backoff_factor if t.HasField("backoff_factor") else 0.0,
                backoff_max=t.backoff_max_seconds if t.HasField("backoff_max_seconds") else 0,
                labels=labels,
            )
        concurrency = [(c.expression, c.max_runs or 1) for c in req.concurrency_arr]
        if req.HasField("concurrency"):
            concurrency.append((req.concurrency.expression, req.concurrency.max_runs or 1))
        cron_input = json.loads(req.cron_input) if req.cron_input else {}
        wf = WorkflowDef(req.name, tasks, concurrency, list(req.cron_triggers), cron_input or {})
        with self.lock:
            self.workflows[req.name] = wf
        return wf

    def trigger(self, name: str, input: dict[str, Any], metadata: dict[str, Any]) -> str:
        with self.lock:
            wf = self.workflows.get(name)
            if wf is None:
                raise KeyError(name)
            run_id = str(uuid.uuid4())
            tasks = {
                rid: TaskRun(id=str(uuid.uuid4()), run_id=run_id, spec=spec) for rid, spec in wf.tasks.items()
            }
            run = Run(id=run_id, workflow=wf, input=input, metadata=metadata, tasks=tasks)
            self.runs[run_id] = run
            for task in tasks.values():
                self.task_index[task.id] = task
            self.changed.notify_all()
        return run_id

    def fire_cron(self, name: str) -> str:
        """What the engine does when a registered cron schedule comes due: trigger a run of the
        workflow with its cron input (the tests fire it instead of waiting for the minute)."""
        with self.lock:
            wf = self.workflows[name]
            if not wf.crons:
                raise KeyError(f"{name} has no cron schedule")
        return self.trigger(name, dict(wf.cron_input), {})

    def _group(self, run: Run, expression: str) -> str:
        root, _, path = expression.partition(".")
        value: Any = {"input": run.input, "additional_metadata": run.metadata}.get(root)
        if value is None:
            return expression
        for key in path.split(".") if path else []:
            value = value.get(key) if isinstance(value, dict) else None
        return f"{expression}={value}"

    def _concurrency_allows(self, run: Run) -> bool:
        if run.active:
            return True
        for expression, max_runs in run.workflow.concurrency:
            group = self._group(run, expression)
            active = sum(
                1
                for other in self.runs.values()
                if other.active
                and not other.done.is_set()
                and other.workflow.name == run.workflow.name
                and self._group(other, expression) == group
            )
            if active >= max_runs:
                return False
        return True

    def _pick_worker(self, spec: TaskDef) -> Worker | None:
        candidates = [
            w
            for w in self.workers.values()
            if w.listening
            and not w.paused
            and not w.gone
            and spec.action in w.actions
            and len(w.running) < w.slots
            and all(w.labels.get(k) == v for k, v in spec.labels.items())
        ]
        return min(candidates, key=lambda w: len(w.running)) if candidates else None

    def _assign(self, run: Run, task: TaskRun, worker: Worker) -> None:
        parents = {p: run.tasks[p].output or {} for p in task.spec.parents}
        payload = {"input": run.input, "parents": parents}
        task.status, task.worker_id, task.started_at = RUNNING, worker.id, time.monotonic()
        run.status, run.active = RUNNING, True
        worker.running.add(task.id)
        self.assignments.append((task.id, task.spec.readable_id, task.retry_count))
        worker.queue.put(
            d.AssignedAction(
                tenant_id=TENANT_ID,
                workflow_run_id=run.id,
                job_id=run.workflow.name,
                job_name=run.workflow.name,
                job_run_id=run.id,
                task_id=task.spec.readable_id,
                task_run_external_id=task.id,
                action_id=task.spec.action,
                action_type=d.START_STEP_RUN,
                action_payload=json.dumps(payload),
                task_name=task.spec.readable_id,
                retry_count=task.retry_count,
                additional_metadata=json.dumps(run.metadata),
                workflow_id=run.workflow.name,
            )
        )

    def _schedule_once(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.done.is_set() or not self._concurrency_allows(run):
                continue
            for task in run.tasks.values():
                if task.status != QUEUED or task.ready_at > now:
                    continue
                if any(run.tasks[p].status != COMPLETED for p in task.spec.parents):
                    continue
                worker = self._pick_worker(task.spec)
                if worker is None:
                    continue
                self._assign(run, task, worker)

    def _scheduler(self) -> None:
        with self.lock:
            while not self._stop.is_set():
                self._schedule_once()
                self.changed.wait(timeout=0.1)

    def _reaper(self) -> None:
        while not self._stop.wait(0.1):
            with self.lock:
                now = time.monotonic()
                for worker in self.workers.values():
                    dead = (
                        not worker.gone
                        and not worker.listening
                        and now - worker.last_heartbeat > self.worker_timeout
                    )
                    if dead:
                        worker.gone = True
                    if worker.gone and worker.running:
                        for task_id in list(worker.running):
                            self._release(self.task_index[task_id], requeue=True)
                for task in list(self.task_index.values()):
                    if task.status == RUNNING and now - task.started_at > task.spec.timeout:
                        self._cancel_on_worker(task)
                        self._failed(
                            task,
                            f"TimeoutError: task exceeded its execution timeout of {task.spec.timeout:g}s",
                            retry=True,
                        )
                self.changed.notify_all()

    def _release(self, task: TaskRun, *, requeue: bool) -> None:
        worker = self.workers.get(task.worker_id)
        if worker is not None:
            worker.running.discard(task.id)
        if requeue and task.status == RUNNING:
            task.status, task.worker_id = QUEUED, ""

    def _cancel_on_worker(self, task: TaskRun) -> None:
        worker = self.workers.get(task.worker_id)
        if worker is None:
            return
        worker.queue.put(
            d.AssignedAction(
                tenant_id=TENANT_ID,
                workflow_run_id=task.run_id,
                job_run_id=task.run_id,
                task_id=task.spec.readable_id,
                task_run_external_id=task.id,
                action_id=task.spec.action,
                action_type=d.CANCEL_STEP_RUN,
                task_name=task.spec.readable_id,
                retry_count=task.retry_count,
            )
        )
        worker.running.discard(task.id)

    def _failed(self, task: TaskRun, error: str, *, retry: bool) -> None:
        self._release(task, requeue=False)
        if retry and task.retry_count < task.spec.retries:
            task.retry_count += 1
            task.status, task.worker_id, task.error = QUEUED, "", error
            delay = 0.0
            if task.spec.backoff_factor:
                delay = task.spec.backoff_factor**task.retry_count
                if task.spec.backoff_max:
                    delay = min(delay, task.spec.backoff_max)
            task.ready_at = time.monotonic() + delay
            return
        task.status, task.error = FAILED, error
        run = self.runs[task.run_id]
        # as Hatchet does: the failed task's descendants never run; independent branches go on
        below = {task.spec.readable_id}
        for other in run.tasks.values():  # tasks are in definition (topological) order
            if below.intersection(other.spec.parents):
                below.add(other.spec.readable_id)
                if other.status == QUEUED:
                    other.status = CANCELLED
        self._maybe_finish(run)

    def _maybe_finish(self, run: Run) -> None:
        statuses = {t.status for t in run.tasks.values()}
        if statuses & {QUEUED, RUNNING}:
            return
        if FAILED in statuses:
            run.status = FAILED
        elif CANCELLED in statuses:
            run.status = CANCELLED
        else:
            run.status = COMPLETED
        run.done.set()
        event = self.run_event(run)
        for ids, queue in self.subscribers:
            if run.id in ids:
                queue.put(event)

    def run_event(self, run: Run) -> d.WorkflowRunEvent:
        results = []
        for name, task in run.tasks.items():
            error = (
                task.error
                if task.status == FAILED
                else ("task was cancelled" if task.status == CANCELLED else "")
            )
            output = json.dumps(task.output) if task.status == COMPLETED and task.output is not None else ""
            results.append(
                d.StepRunResult(
                    task_run_external_id=task.id,
                    task_name=name,
                    job_run_id=run.id,
                    error=error,
                    output=output,
                )
            )
        return d.WorkflowRunEvent(
            workflow_run_id=run.id, event_type=d.WORKFLOW_RUN_EVENT_TYPE_FINISHED, results=results
        )

    def step_event(self, req: d.StepActionEvent) -> None:
        with self.lock:
            task = self.task_index.get(req.task_run_external_id)
            kind = _EVENT_NAMES.get(req.event_type, str(req.event_type))
            current = (
                task is not None
                and task.status == RUNNING
                and task.retry_count == req.retry_count
                and task.worker_id == req.worker_id
            )
            self.events.append(
                Event(
                    req.task_run_external_id,
                    task.spec.readable_id if task else "",
                    kind,
                    req.retry_count,
                    current,
                    req.event_payload,
                    req.should_not_retry,
                )
            )
            if task is None or not current:
                self.changed.notify_all()
                return
            if kind == "COMPLETED":
                self._release(task, requeue=False)
                task.status = COMPLETED
                task.output = json.loads(req.event_payload) if req.event_payload else {}
                self._maybe_finish(self.runs[task.run_id])
            elif kind == "FAILED":
                self._failed(task, req.event_payload, retry=not req.should_not_retry)
            self.changed.notify_all()

    def cancel(self, ids: list[str]) -> list[str]:
        cancelled = []
        with self.lock:
            for ident in ids:
                run = self.runs.get(ident)
                tasks = (
                    list(run.tasks.values())
                    if run
                    else ([self.task_index[ident]] if ident in self.task_index else [])
                )
                for task in tasks:
                    if task.status == RUNNING:
                        self._cancel_on_worker(task)
                    if task.status in (QUEUED, RUNNING):
                        task.status = CANCELLED
                        cancelled.append(task.id)
                if tasks:
                    self._maybe_finish(self.runs[tasks[0].run_id])
            self.changed.notify_all()
        return cancelled
