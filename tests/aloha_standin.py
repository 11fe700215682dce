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

Both are `standin_http.StandIn`s: they record every request and take queued `Fault`s.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from standin_http import HTML_404, HTML_500, Fault, StandIn

__all__ = ["HTML_404", "HTML_500", "PNG_1X1", "AlohaClient", "AlohaServer", "Fault", "Task"]

PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


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


class AlohaServer(StandIn):
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


class AlohaClient(StandIn):
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
