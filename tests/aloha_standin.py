"""Stand-ins for ShowUI-Aloha's server and client, from the contract in DESIGN.md (no Flask).

`AlohaServer` (port 7887 on the VM):
- `GET /` -> 200 `Aloha API server is running` (text/html, as Flask sends a str).
- `POST /generate_action` `{screenshot, query, task_id?, action_history?, trace_name?}` -> 200
  `{status, generated_plan{observation, reasoning, step_info}, generated_action{content},
  current_traj_step, complete_flag}`; a missing `screenshot` or `query` (or a body that is not a
  JSON object) -> 400 `{"error": ...}`. `plan` says how the model behaves: `stop_after` steps then
  a STOP action; `error-action` (no API key: 200 with an ERROR action); `html500` (the model is
  unreachable: a 500 HTML page); `not-json` (a 200 whose body is not JSON). `think_seconds` delays
  each answer.

`AlohaClient` (port 7888, the user's desktop session):
- `POST /run_task` `{task, selected_screen?, trace_id?, max_steps?, server_url?}` -> 200
  `{"status": "success", "message": "Task started"}` and a sampling loop in a thread; 409
  `{"status": "error", "message": "A task is already running"}`; 400 when `task` is missing.
- `POST /stop` -> 200 while a task runs (the loop sees it between steps), else 400 `No active task
  to stop`. Any other route or method -> 404 (an HTML page): it has no GET route.
- The loop, per step: stop requested? -> ends; POST a screenshot and the task to `server_url` (the
  full `/generate_action` URL); an unreachable server, a non-200, a body that is not JSON or an
  ERROR action ends the task; a STOP action or `complete_flag` ends it; else it "acts" for
  `step_seconds` (about 1.7 s on a real VM) and goes on; `max_steps` (default 50) ends it.
  Each task is kept in `tasks` with how and after how many steps it ended.

Both record every request (`requests`) and take queued `faults` for the tests: the next matching
request answers with a status and body, hangs, or has its connection dropped with no answer.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
HTML_500 = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error.</p>\n"
)
HTML_404 = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server.</p>\n"
)


@dataclass
class Fault:
    """What the next request to `route` (None: any) gets instead of its answer."""

    route: str | None = None
    status: int = 500
    body: str = HTML_500
    content_type: str = "text/html; charset=utf-8"
    hang: float = 0.0  # seconds to wait before answering (or dropping)
    drop: bool = False  # close the connection with no answer
    trickle: float = 0.0  # seconds between the body's bytes, sent one at a time
    endless: bool = False  # a body with no length that never ends (until the client hangs up)


@dataclass
class Task:
    task: str
    max_steps: int
    server_url: str
    trace_id: str | None
    screen: int | None
    started_at: float = field(default_factory=time.monotonic)
    steps: int = 0
    ended: str | None = None  # why: stopped, stop-action, error-action, server-error, ...
    ended_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def _send(self, status: int, body: str | dict[str, Any], content_type: str | None = None) -> None:
        if isinstance(body, dict):
            data, content_type = json.dumps(body).encode(), content_type or "application/json"
        else:
            data, content_type = body.encode(), content_type or "text/html; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, fault: Fault) -> None:
        """The body one byte every `fault.trickle` s, or (`endless`) 64 KiB pieces for ever."""
        data = fault.body.encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", fault.content_type)
        if fault.endless:
            self.send_header("Connection", "close")  # the body ends when the connection does
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        closing = self.server.owner.closing
        with contextlib.suppress(OSError):
            if fault.endless:
                piece = b"[" + b"0," * 32767 + b"0"
                while not closing.is_set():
                    self.wfile.write(piece)
            for byte in data:
                if closing.wait(fault.trickle):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

    def _handle(self, method: str) -> None:
        body = self._body() if method == "POST" else None
        owner = self.server.owner
        if owner.closing.is_set():  # stopping: a dead process answers nothing
            self.close_connection = True
            return
        owner.record(method, self.path, body)
        fault = owner.take_fault(self.path)
        if fault is not None:
            if fault.hang:
                owner.closing.wait(fault.hang)
            if fault.drop:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                return
            if fault.trickle or fault.endless:
                self._stream(fault)
                return
            self._send(fault.status, fault.body, fault.content_type)
            return
        status, answer, content_type = owner.answer(method, self.path, body)
        self._send(status, answer, content_type)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: _StandIn

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        self.owner.connections.add(conn)
        return conn, address

    def close_connections(self) -> None:
        """Drop every open (keep-alive) connection, as a process that dies would."""
        for conn in list(self.owner.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.owner.connections.clear()


class _StandIn(abc.ABC):
    """A threaded HTTP server on 127.0.0.1 (a free port, or `port` to come back on the same one)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: list[Fault] = []
        self.closing = threading.Event()
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.closing.clear()
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        """Stop listening and drop open connections: new ones are refused, like a dead process."""
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            self._httpd = None

    def record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, body))

    def routes(self) -> list[str]:
        with self._lock:
            return [f"{method} {path}" for method, path, _ in self.requests]

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.route in (None, path):
                    return self.faults.pop(i)
        return None

    @abc.abstractmethod
    def answer(self, method: str, path: str, body: Any) -> tuple[int, str | dict[str, Any], str | None]:
        """The status, body and content type this service answers `method path` with."""


class AlohaServer(_StandIn):
    def __init__(self, port: int = 0, *, stop_after: int = 3, think_seconds: float = 0.0) -> None:
        self.plan = "steps"  # steps | error-action | html500 | not-json
        self.stop_after = stop_after
        self.think_seconds = think_seconds
        self.health = "ok"  # ok | html500
        super().__init__(port)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, str | dict[str, Any], str | None]:
        if path == "/" and method == "GET":
            if self.health == "html500":
                return 500, HTML_500, None
            return 200, "Aloha API server is running", None
        if path != "/generate_action" or method != "POST":
            return 404, HTML_404, None
        if not isinstance(body, dict):
            return 400, {"error": "Request body must be JSON"}, None
        missing = [name for name in ("screenshot", "query") if not body.get(name)]
        if missing:
            return 400, {"error": f"Missing required fields: {', '.join(missing)}"}, None
        if self.think_seconds:
            time.sleep(self.think_seconds)
        if self.plan == "html500":
            return 500, HTML_500, None
        if self.plan == "not-json":
            return 200, "model said: click the start button", "text/plain; charset=utf-8"
        step = len(body.get("action_history") or []) + 1
        if self.plan == "error-action":
            action: dict[str, Any] = {"action": "ERROR", "text": "No API key configured"}
        elif step >= self.stop_after:
            action = {"action": "STOP"}
        else:
            action = {"action": "CLICK", "position": [100 + step, 200]}
        return (
            200,
            {
                "status": "success",
                "generated_plan": {
                    "observation": f"step {step} of {body['query'][:20]!r}",
                    "reasoning": "follow the task",
                    "step_info": f"step {step}",
                },
                "generated_action": {"content": action},
                "current_traj_step": step,
                "complete_flag": action["action"] == "STOP",
            },
            None,
        )


class AlohaClient(_StandIn):
    DEFAULT_MAX_STEPS = 50

    def __init__(self, port: int = 0, *, step_seconds: float = 0.2, server_timeout: float = 30.0) -> None:
        self.step_seconds = step_seconds
        self.server_timeout = server_timeout
        self.tasks: list[Task] = []
        self.current: Task | None = None
        super().__init__(port)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, str | dict[str, Any], str | None]:
        if method != "POST" or path not in ("/run_task", "/stop"):
            return 404, HTML_404, None
        with self._lock:
            running = self.current is not None and not self.current.done.is_set()
            if path == "/stop":
                if not running:
                    return 400, {"status": "error", "message": "No active task to stop"}, None
                assert self.current is not None
                self.current.stop.set()
                return 200, {"status": "success", "message": "Stop requested"}, None
            if not isinstance(body, dict) or not body.get("task"):
                return 400, {"status": "error", "message": "Missing 'task' in request"}, None
            if running:
                return 409, {"status": "error", "message": "A task is already running"}, None
            task = Task(
                task=body["task"],
                max_steps=int(body.get("max_steps") or self.DEFAULT_MAX_STEPS),
                server_url=body.get("server_url") or "http://127.0.0.1:7887/generate_action",
                trace_id=body.get("trace_id"),
                screen=body.get("selected_screen"),
            )
            self.current = task
            self.tasks.append(task)
        threading.Thread(target=self._loop, args=(task,), daemon=True).start()
        return 200, {"status": "success", "message": "Task started"}, None

    def _ask_server(self, task: Task, history: list[dict[str, Any]]) -> tuple[int, bytes]:
        request: dict[str, Any] = {
            "screenshot": PNG_1X1,
            "query": task.task,
            "task_id": f"task-{id(task)}",
            "action_history": history,
        }
        if task.trace_id:
            request["trace_name"] = task.trace_id
        req = urllib.request.Request(
            task.server_url,
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.server_timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _loop(self, task: Task) -> None:
        history: list[dict[str, Any]] = []
        reason = "max-steps"
        try:
            for _ in range(task.max_steps):
                if task.stop.is_set():
                    reason = "stopped"
                    break
                try:
                    status, data = self._ask_server(task, history)
                except OSError:
                    reason = "server-unreachable"
                    break
                if status != 200:
                    reason = f"server-error-{status}"
                    break
                try:
                    answer = json.loads(data)
                    action = answer["generated_action"]["content"]
                except (ValueError, KeyError, TypeError):
                    reason = "malformed-answer"
                    break
                if action.get("action") == "ERROR":
                    reason = "error-action"
                    break
                if action.get("action") == "STOP" or answer.get("complete_flag"):
                    task.steps += 1
                    reason = "stop-action"
                    break
                if self.closing.wait(self.step_seconds):  # acting on the desktop
                    reason = "client-closed"
                    break
                task.steps += 1
                history.append(action)
        finally:
            task.ended, task.ended_at = reason, time.monotonic()
            task.done.set()

    def wait_idle(self, timeout: float = 10.0) -> None:
        task = self.current
        if task is not None:
            assert task.done.wait(timeout), "the stand-in's task did not end"

    def real_tasks(self) -> list[Task]:
        """The tasks started, without win-automation's end-of-task probes."""
        return [t for t in self.tasks if not t.task.startswith("win-automation: is a task running?")]
