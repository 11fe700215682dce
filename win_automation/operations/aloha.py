"""ShowUI-Aloha tasks on the VM's desktop: check both services, start a task, follow it, stop it.

    aloha = ctx.vm.aloha                  # an `Aloha`, bound to the job's cancel check
    aloha.check()                         # server and client, each up (else ConnectError, ...)
    aloha.start(task, max_steps=20)       # 409: ServiceRefused, the desktop is busy
    followed = aloha.follow(deadline)     # ends: the task ended, or /stop at the deadline/cancel
    aloha.abandon(exc)                    # after a failure: one best-effort /stop (follow does it)
    aloha.transcript()                    # response.json: every request and answer, in order

Aloha's contract (DESIGN.md): the client has no status route, so a task has ended when
`/run_task` no longer answers 409. `follow` asks so every `aloha.poll_interval` with a probe task
that cannot act: `max_steps` 1 and a `server_url` where nothing listens (`PROBE_SERVER_URL`), so
even when it starts (the real task has ended) it fails its first step at once. Past the deadline,
or when the job is cancelled, it sends `/stop` (seen between steps) and waits up to
`aloha.stop_timeout` for the task to end (a poll that hangs then is abandoned within 0.1 s).
When following fails instead (an answer that is not Aloha's, the client gone, a bug, Ctrl-C or
SIGTERM as KeyboardInterrupt), `abandon` sends the task one `/stop` (one attempt, within
`aloha.request_timeout`, recorded like every exchange) and the failure goes on as it was: else the
task would go on driving the desktop unwatched and the next job be refused 409 busy.
`health` checks each service on its own (both at once), with `GET /` only (never `/stop`): the
server answers 200 "Aloha API server is running", the client any HTTP answer (404: it has no GET
route). Logs name a task only by its length and sha256.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from win_automation import metrics
from win_automation.adapters.aloha import AlohaService, Answer, Exchange, aloha_service
from win_automation.config import Config
from win_automation.errors import ConnectError, ServiceRefused, WinAutomationError
from win_automation.operations.aloha_transcript import Transcript
from win_automation.operations.endpoints import service_url

log = logging.getLogger(__name__)

PROBE_TASK = "win-automation: is a task running? (a probe that cannot act)"
PROBE_SERVER_URL = "http://127.0.0.1:9/win-automation-probe"
SERVER_HEALTH_TEXT = "Aloha API server is running"
TICK = 0.1  # how often the cancel check and the deadline are looked at while waiting

Service = Literal["server", "client"]


def task_digest(task: str) -> tuple[int, str]:
    """(length in characters, sha256 hex): all that logs may say of a task's text."""
    return len(task), hashlib.sha256(task.encode("utf-8")).hexdigest()


def generate_action_url(server_url: str) -> str:
    """The server's `/generate_action`, as the client is told it (the full URL, not the root)."""
    return server_url.rstrip("/") + "/generate_action"


class ServiceHealth(BaseModel):
    service: Service
    url: str
    ok: bool
    latency_ms: int | None = None
    status: int | None = None
    problem: str | None = None
    exit_code: int = 0


Reason = Literal["ended", "deadline", "cancelled", "failed", "interrupted"]


@dataclass
class Followed:
    """How following a task ended: `ended` by itself, or stopped at the `deadline` or on
    `cancelled`; or sent /stop by `abandon` when following it `failed` or was `interrupted`."""

    reason: Reason
    duration_ms: int
    polls: int
    stop_sent: bool = False
    stop_answer: int | None = None
    ended: bool = True
    stop_error: str | None = None


class Aloha:
    """The VM's Aloha server and client for one job or command; records every exchange."""

    def __init__(self, config: Config, *, cancelled: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.cancelled = cancelled
        self._transcript = Transcript()
        self._services: dict[str, AlohaService] = {}
        self._started: float | None = None  # a task started here, since seen to end or sent /stop: None
        self._polls = 0
        self.abandoned: Followed | None = None
        """What `abandon` did: the /stop sent after following the task failed."""

    # -- plumbing ------------------------------------------------------------------------------

    def _service(self, name: Service) -> AlohaService:
        if name not in self._services:
            cfg = self.config.aloha
            configured = cfg.server_url if name == "server" else cfg.client_url
            self._services[name] = aloha_service(
                name, service_url(self.config, configured), cfg.request_timeout
            )
        return self._services[name]

    def _record(self, exchange: Exchange) -> None:
        self._transcript.add(exchange)

    @property
    def exchanges(self) -> list[dict[str, Any]]:
        """response.json's records: identical consecutive exchanges are one (aloha_transcript)."""
        return self._transcript.records

    @property
    def exchange_count(self) -> int:
        """Every attempt of every request so far, each counted (a collapsed record's too)."""
        return self._transcript.total

    def _request(
        self,
        name: Service,
        method: str,
        route: str,
        body: Any = None,
        stop: Callable[[], bool] | None = None,
        once: bool = False,
    ) -> Answer:
        return self._service(name).request(method, route, body, record=self._record, stop=stop, once=once)

    def transcript(self, **about: Any) -> str:
        """response.json: `about` (the task's length and hash, the outcome...) and the exchanges."""
        return self._transcript.dump(**about)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> list[ServiceHealth]:
        """Each service checked on its own with `GET /` (with the retry rule), never `/stop`; both
        at once (two hung services cost one aloha.request_timeout), recorded server first."""
        kept: dict[Service, list[Exchange]] = {"server": [], "client": []}
        reports: dict[Service, ServiceHealth] = {}
        for name in kept:  # addresses one at a time: a port forward may open the SSH connection
            with contextlib.suppress(WinAutomationError):
                self._service(name)

        def check(name: Service) -> None:
            reports[name] = self._health(name, kept[name].append)

        client = threading.Thread(target=contextvars.copy_context().run, args=(check, "client"))
        client.start()
        check("server")
        client.join()
        for exchange in kept["server"] + kept["client"]:
            self._record(exchange)
        return [reports["server"], reports["client"]]

    def _health(self, name: Service, record: Callable[[Exchange], None]) -> ServiceHealth:
        configured = self.config.aloha.server_url if name == "server" else self.config.aloha.client_url
        report = ServiceHealth(service=name, url=configured, ok=False)
        try:
            answer = self._service(name).request("GET", "/", record=record, stop=self.cancelled)
        except WinAutomationError as exc:
            report.problem, report.exit_code = str(exc), exc.exit_code
            return report
        report.latency_ms, report.status = answer.duration_ms, answer.status
        if name == "client":  # any HTTP answer means it is up (it has no GET route: 404)
            report.ok = True
        elif answer.status != 200:
            report.problem = f"the Aloha server answered GET / with {answer.status} ({answer.digest})"
            report.exit_code = 1
        elif SERVER_HEALTH_TEXT not in answer.text:
            report.problem = f"the Aloha server's GET / is not its health text ({answer.digest})"
            report.exit_code = 1
        else:
            report.ok = True
        return report

    def check(self) -> list[ServiceHealth]:
        """`health`, raising the first problem (server first): ConnectError (3) or ServiceRefused (1)."""
        found = self.health()
        for report in found:
            if not report.ok:
                error = ConnectError if report.exit_code == ConnectError.exit_code else ServiceRefused
                raise error(report.problem or f"the Aloha {report.service} is not healthy")
        return found

    # -- tasks ---------------------------------------------------------------------------------

    def _json_of(self, answer: Answer, route: str) -> dict[str, Any]:
        if not answer.is_json or not isinstance(answer.json, dict):
            kind = "an HTML page" if "html" in answer.content_type.lower() else "a body that is not JSON"
            if answer.json_error is not None:
                kind = f"a body that is not usable JSON ({answer.json_error})"
            raise ServiceRefused(
                f"the Aloha client answered {route} with {answer.status} and {kind} ({answer.digest})"
            )
        return answer.json

    def start(
        self,
        task: str,
        *,
        max_steps: int | None = None,
        screen: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        """Start `task` on the client (told the server's /generate_action); 409 is ServiceRefused
        (the desktop is busy: nothing started), any other refusal too."""
        body: dict[str, Any] = {
            "task": task,
            "server_url": generate_action_url(self.config.aloha.server_url),
        }
        if screen is not None:
            body["selected_screen"] = screen
        if trace_id is not None:
            body["trace_id"] = trace_id
        if max_steps is not None:
            body["max_steps"] = max_steps
        length, sha = task_digest(task)
        answer = self._request("client", "POST", "/run_task", body)
        if answer.status == 409:
            raise ServiceRefused(
                "the VM desktop is busy: the Aloha client is already running another task "
                "(409; nothing was started)"
            )
        payload = self._json_of(answer, "/run_task")
        if answer.status != 200 or payload.get("status") != "success":
            raise ServiceRefused(
                f"the Aloha client refused the task: {answer.status} to /run_task ({answer.digest})"
            )
        self._started, self._polls = time.monotonic(), 0  # from here on a failure sends /stop
        metrics.inc("aloha_runs_total")
        log.info("aloha task started", extra={"op": "aloha.run", "task_len": length, "task_sha256": sha})

    def running(self, stop: Callable[[], bool] | None = None) -> bool:
        """True while a task runs: the client answers the probe task with 409. `stop`: abandon the
        request as soon as that turns true (NoAnswer)."""
        probe = {"task": PROBE_TASK, "max_steps": 1, "server_url": PROBE_SERVER_URL}
        answer = self._request("client", "POST", "/run_task", probe, stop)
        if answer.status == 409:
            return True
        payload = self._json_of(answer, "/run_task")
        if answer.status == 200 and payload.get("status") == "success":
            return False
        raise ServiceRefused(
            f"the Aloha client answered the end-of-task probe with {answer.status} ({answer.digest})"
        )

    def stop(self, *, once: bool = False) -> bool:
        """Ask the client to stop its task (seen between steps): True when one was running.
        `once`: one attempt, not retried (within aloha.request_timeout)."""
        answer = self._request("client", "POST", "/stop", once=once)
        if answer.status == 200:
            return True
        if answer.status == 400:
            return False  # "No active task to stop"
        raise ServiceRefused(f"the Aloha client answered /stop with {answer.status} ({answer.digest})")

    def _wait(self, seconds: float, deadline: float | None = None) -> None:
        """Sleep `seconds`, waking early when cancelled or at `deadline` (monotonic)."""
        until = time.monotonic() + seconds
        if deadline is not None:
            until = min(until, deadline)
        while not self.cancelled() and (left := until - time.monotonic()) > 0:
            time.sleep(min(TICK, left))

    def follow(self, timeout: float) -> Followed:
        """Follow the started task until it ends; at `timeout` seconds or on cancel, stop it and
        wait for its end. ConnectError when the client stops answering meanwhile; on that or any
        other failure (KeyboardInterrupt too) the task is sent /stop (`abandon`) first."""
        try:
            return self._follow(timeout)
        except BaseException as exc:
            self.abandon(exc)
            raise

    def _follow(self, timeout: float) -> Followed:
        started = time.monotonic()
        deadline = started + timeout
        interval = self.config.aloha.poll_interval

        def reason() -> Literal["deadline", "cancelled"] | None:
            if self.cancelled():
                return "cancelled"
            return "deadline" if time.monotonic() >= deadline else None

        while True:
            self._wait(interval, deadline)
            if (why := reason()) is not None:
                return self._stop_and_wait(why, started, self._polls)
            self._polls += 1
            try:  # a poll that hangs is abandoned at the deadline or on cancel
                still = self.running(stop=lambda: reason() is not None)
            except ConnectError as exc:
                if (why := reason()) is not None:
                    return self._stop_and_wait(why, started, self._polls)
                raise type(exc)(f"while the task ran: {exc}") from exc
            if not still:
                self._started = None
                return Followed("ended", round((time.monotonic() - started) * 1000), self._polls)

    def _stop_and_wait(
        self, reason: Literal["deadline", "cancelled"], started: float, polls: int
    ) -> Followed:
        log.info("stopping the aloha task", extra={"op": "aloha.stop", "reason": reason})
        followed = Followed(reason, 0, polls, stop_sent=True, ended=False)
        try:
            was_running = self.stop()
            self._started = None  # the client took the /stop: nothing left for `abandon`
            followed.stop_answer = 200 if was_running else 400
            give_up = time.monotonic() + self.config.aloha.stop_timeout
            ended = not was_running
            while not ended and time.monotonic() < give_up:
                time.sleep(min(self.config.aloha.poll_interval, max(0.0, give_up - time.monotonic())))
                followed.polls += 1
                ended = not self.running()
            followed.ended = ended
        except WinAutomationError as exc:  # the deadline (or cancel) stays the reason it ends
            followed.stop_error = str(exc)
        followed.duration_ms = round((time.monotonic() - started) * 1000)
        return followed

    def abandon(self, failure: BaseException) -> Followed | None:
        """After `failure` ended following (or starting) the task: when a task started here may
        still run (not seen to end, not sent /stop), send it /stop once, within
        aloha.request_timeout, and say so (also in `abandoned`); else None (or what was already
        done). It never raises but on a second interrupt: `failure` stays the error."""
        if self._started is None:
            return self.abandoned
        reason: Reason = "failed" if isinstance(failure, Exception) else "interrupted"
        started, self._started = self._started, None
        followed = self.abandoned = Followed(reason, 0, self._polls, stop_sent=True, ended=False)
        log.warning(
            "following the aloha task failed; stopping it", extra={"op": "aloha.stop", "reason": reason}
        )
        try:
            was_running = self.stop(once=True)
            followed.stop_answer, followed.ended = (200, False) if was_running else (400, True)
        except WinAutomationError as exc:
            followed.stop_error = str(exc)
        except Exception as exc:  # a bug of ours: `failure` is still what is raised
            followed.stop_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        except BaseException:  # a second Ctrl-C: it wins, the way out is quick
            followed.stop_error = "interrupted before an answer"
            raise
        finally:
            followed.duration_ms = round((time.monotonic() - started) * 1000)
        return followed


def aloha_health(config: Config) -> list[ServiceHealth]:
    """`aloha health`: each service's state, latency and what was wrong."""
    return Aloha(config).health()


def aloha_stop(config: Config) -> bool:
    """`aloha stop`: ask the client to stop its task; True when one was running."""
    return Aloha(config).stop()
