"""The fake Hatchet engine's wire side: the gRPC servicer (on the SDK's generated stubs) and the
HTTP health/REST handler. Each RPC is a thin call into `fake_hatchet.FakeHatchet`, which holds the
engine's state and logic; the token is checked on every call as the real engine does."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any

import grpc
from hatchet_sdk.contracts import dispatcher_pb2 as d
from hatchet_sdk.contracts import dispatcher_pb2_grpc as dg
from hatchet_sdk.contracts import workflows_pb2 as w0
from hatchet_sdk.contracts import workflows_pb2_grpc as w0g
from hatchet_sdk.contracts.v1 import workflows_pb2 as w1
from hatchet_sdk.contracts.v1 import workflows_pb2_grpc as w1g

if TYPE_CHECKING:
    from fake_hatchet import FakeHatchet

TENANT_ID = "707d0855-80ab-4e1f-a156-f1c4546cbf52"
QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
_PROTO_STATUS = {
    QUEUED: w1.RunStatus.QUEUED,
    RUNNING: w1.RunStatus.RUNNING,
    COMPLETED: w1.RunStatus.COMPLETED,
    FAILED: w1.RunStatus.FAILED,
    CANCELLED: w1.RunStatus.CANCELLED,
}


def add_services(engine: FakeHatchet, server: grpc.Server) -> None:
    servicer = Servicer(engine)
    dg.add_DispatcherServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    w0g.add_WorkflowServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    w1g.add_AdminServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


def _stall_if_listed(engine: FakeHatchet, name: str, context: grpc.ServicerContext) -> None:
    """A call named in `engine.stalled` gets no answer until its caller gives up (or it leaves the set)."""
    while name in engine.stalled and context.is_active():
        time.sleep(0.05)


def _refuse_if_listed(engine: FakeHatchet, name: str, context: grpc.ServicerContext) -> None:
    """A call named in `engine.refused` is refused with its status (as a real engine refuses a
    revoked token: UNAUTHENTICATED)."""
    code = engine.refused.get(name)
    if code is not None:
        context.abort(code, f"{name} refused")


def _abort_unless_authorized(engine: FakeHatchet, context: grpc.ServicerContext) -> None:
    metadata = dict(context.invocation_metadata())
    scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
    if scheme.lower() != "bearer" or token != engine.token:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")


class Servicer(dg.DispatcherServicer, w0g.WorkflowServiceServicer, w1g.AdminServiceServicer):  # type: ignore[misc]
    """The RPCs, each a thin call into `FakeHatchet`."""

    def __init__(self, engine: FakeHatchet) -> None:
        self.engine = engine

    # Dispatcher
    def GetVersion(self, request: d.GetVersionRequest, context: grpc.ServicerContext) -> d.GetVersionResponse:
        _abort_unless_authorized(self.engine, context)
        return d.GetVersionResponse(version=self.engine.version)

    def Register(
        self, request: d.WorkerRegisterRequest, context: grpc.ServicerContext
    ) -> d.WorkerRegisterResponse:
        _abort_unless_authorized(self.engine, context)
        _refuse_if_listed(self.engine, "Register", context)
        labels = {
            k: (v.str_value if v.HasField("str_value") else v.int_value) for k, v in request.labels.items()
        }
        slots = request.slot_config.get("default", request.slots or 100)
        from fake_hatchet import Worker

        worker = Worker(str(uuid.uuid4()), request.worker_name, set(request.actions), slots, labels)
        with self.engine.lock:
            self.engine.workers[worker.id] = worker
            self.engine.changed.notify_all()
        return d.WorkerRegisterResponse(tenant_id=TENANT_ID, worker_id=worker.id, worker_name=worker.name)

    def ListenV2(
        self, request: d.WorkerListenRequest, context: grpc.ServicerContext
    ) -> Iterator[d.AssignedAction]:
        _abort_unless_authorized(self.engine, context)
        _refuse_if_listed(self.engine, "ListenV2", context)
        engine = self.engine
        with engine.lock:
            worker = engine.workers.get(request.worker_id)
            if worker is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "worker not found")
            worker.listening = True
            worker.last_heartbeat = time.monotonic()
            engine.changed.notify_all()
        try:
            while (
                context.is_active()
                and not worker.gone
                and not engine._stop.is_set()
                and "ListenV2" not in engine.refused
            ):
                try:
                    action = worker.queue.get(timeout=0.2)
                except Empty:
                    continue
                if action is None:
                    break
                yield action
        finally:
            with engine.lock:
                worker.listening = False
                worker.last_heartbeat = time.monotonic()
                engine.changed.notify_all()

    def Heartbeat(self, request: d.HeartbeatRequest, context: grpc.ServicerContext) -> d.HeartbeatResponse:
        _abort_unless_authorized(self.engine, context)
        _refuse_if_listed(self.engine, "Heartbeat", context)
        with self.engine.lock:
            worker = self.engine.workers.get(request.worker_id)
            if worker is not None:
                worker.last_heartbeat = time.monotonic()
        return d.HeartbeatResponse()

    def SendStepActionEvent(
        self, request: d.StepActionEvent, context: grpc.ServicerContext
    ) -> d.ActionEventResponse:
        _abort_unless_authorized(self.engine, context)
        self.engine.step_event(request)
        return d.ActionEventResponse(tenant_id=TENANT_ID, worker_id=request.worker_id)

    def Unsubscribe(
        self, request: d.WorkerUnsubscribeRequest, context: grpc.ServicerContext
    ) -> d.WorkerUnsubscribeResponse:
        _abort_unless_authorized(self.engine, context)
        with self.engine.lock:
            worker = self.engine.workers.get(request.worker_id)
            if worker is not None:
                worker.gone = True
                worker.queue.put(None)
            self.engine.changed.notify_all()
        return d.WorkerUnsubscribeResponse(tenant_id=TENANT_ID, worker_id=request.worker_id)

    def UpsertWorkerLabels(
        self, request: d.UpsertWorkerLabelsRequest, context: grpc.ServicerContext
    ) -> d.UpsertWorkerLabelsResponse:
        _abort_unless_authorized(self.engine, context)
        with self.engine.lock:
            worker = self.engine.workers[request.worker_id]
            for key, value in request.labels.items():
                worker.labels[key] = value.str_value if value.HasField("str_value") else value.int_value
        return d.UpsertWorkerLabelsResponse(tenant_id=TENANT_ID, worker_id=request.worker_id)

    def SubscribeToWorkflowRuns(
        self, request_iterator: Iterator[d.SubscribeToWorkflowRunsRequest], context: grpc.ServicerContext
    ) -> Iterator[d.WorkflowRunEvent]:
        _abort_unless_authorized(self.engine, context)
        engine = self.engine
        ids: set[str] = set()
        queue: Queue[d.WorkflowRunEvent | None] = Queue()

        def read_requests() -> None:
            try:
                for req in request_iterator:
                    with engine.lock:
                        ids.add(req.workflow_run_id)
                        run = engine.runs.get(req.workflow_run_id)
                        if run is not None and run.done.is_set():
                            queue.put(engine.run_event(run))  # replay a run that finished before
            except grpc.RpcError:
                pass
            finally:
                queue.put(None)

        with engine.lock:
            engine.subscribers.append((ids, queue))
        threading.Thread(target=read_requests, daemon=True).start()
        try:
            while context.is_active():
                try:
                    event = queue.get(timeout=0.2)
                except Empty:
                    continue
                if event is None:
                    break
                yield event
        finally:
            with engine.lock:
                engine.subscribers.remove((ids, queue))

    # WorkflowService (v0)
    def TriggerWorkflow(
        self, request: w0.TriggerWorkflowRequest, context: grpc.ServicerContext
    ) -> w0.TriggerWorkflowResponse:
        _abort_unless_authorized(self.engine, context)
        try:
            run_id = self.engine.trigger(
                request.name,
                json.loads(request.input or "{}"),
                json.loads(request.additional_metadata or "{}"),
            )
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workflow {request.name} not found")
        return w0.TriggerWorkflowResponse(workflow_run_id=run_id)

    # AdminService (v1)
    def PutWorkflow(
        self, request: w1.CreateWorkflowVersionRequest, context: grpc.ServicerContext
    ) -> w1.CreateWorkflowVersionResponse:
        _abort_unless_authorized(self.engine, context)
        _stall_if_listed(self.engine, "PutWorkflow", context)
        self.engine.put_workflow(request)
        return w1.CreateWorkflowVersionResponse(id=str(uuid.uuid4()), workflow_id=str(uuid.uuid4()))

    def TriggerWorkflowRun(
        self, request: w1.TriggerWorkflowRunRequest, context: grpc.ServicerContext
    ) -> w1.TriggerWorkflowRunResponse:
        _abort_unless_authorized(self.engine, context)
        try:
            run_id = self.engine.trigger(
                request.workflow_name,
                json.loads(request.input or b"{}"),
                json.loads(request.additional_metadata or b"{}"),
            )
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workflow {request.workflow_name} not found")
        return w1.TriggerWorkflowRunResponse(external_id=run_id)

    def GetRunDetails(
        self, request: w1.GetRunDetailsRequest, context: grpc.ServicerContext
    ) -> w1.GetRunDetailsResponse:
        _abort_unless_authorized(self.engine, context)
        with self.engine.lock:
            run = self.engine.runs.get(request.external_id)
            if run is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "run not found")
            task_runs = {
                name: w1.TaskRunDetail(
                    external_id=t.id,
                    status=_PROTO_STATUS[t.status],
                    error=t.error if t.status == FAILED else "",
                    output=json.dumps(t.output).encode() if t.status == COMPLETED else b"",
                    readable_id=name,
                )
                for name, t in run.tasks.items()
            }
            answer = w1.GetRunDetailsResponse(
                input=json.dumps(run.input).encode(),
                status=_PROTO_STATUS[run.status],
                task_runs=task_runs,
                done=run.done.is_set(),
                additional_metadata=json.dumps(run.metadata).encode(),
            )
        if self.engine.details_hook is not None:
            self.engine.details_hook(answer)
        return answer

    def CancelTasks(
        self, request: w1.CancelTasksRequest, context: grpc.ServicerContext
    ) -> w1.CancelTasksResponse:
        _abort_unless_authorized(self.engine, context)
        return w1.CancelTasksResponse(cancelled_tasks=self.engine.cancel(list(request.external_ids)))


def health_handler(engine: FakeHatchet) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any] | str) -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if isinstance(body, dict) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/live", "/ready"):
                self._send(200, "OK")
            elif self.path == "/version":
                self._send(200, {"version": engine.version})
            else:
                self._send(404, {"error": "not found"})

        def do_PATCH(self) -> None:
            # the REST call a draining worker makes: PATCH /api/v1/workers/{id} {"isPaused": true}
            parts = self.path.strip("/").split("/")
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if parts[:3] != ["api", "v1", "workers"] or len(parts) != 4:
                self._send(404, {"error": "not found"})
                return
            with engine.lock:
                worker = engine.workers.get(parts[3])
                if worker is None:
                    self._send(404, {"error": "worker not found"})
                    return
                worker.paused = bool(body.get("isPaused"))
                engine.paused_via_rest.append(worker.id)
                engine.changed.notify_all()
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._send(
                200,
                {
                    "metadata": {"id": worker.id, "createdAt": now, "updatedAt": now},
                    "name": worker.name,
                    "type": "SELFHOSTED",
                    "status": "PAUSED" if worker.paused else "ACTIVE",
                },
            )

    return Handler
