"""Every HTTP exchange ends at its deadline, however slowly the answer comes (adapters.http_deadline):
the doctor's and supervisor's probe, each Aloha request, and Aloha's polls on a cancel or a task's
deadline; and what an Aloha answer may cost (its size in response.json, its nesting), against real
servers on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixture_endpoints import HttpEndpoint, ThreadedServer

from win_automation.adapters import aloha as aloha_adapter
from win_automation.adapters.probe import probe_http
from win_automation.config import Config, load_config
from win_automation.errors import NoAnswer, ServiceRefused
from win_automation.operations.aloha import Aloha

STOP_IDLE = (400, '{"status": "error", "message": "No active task to stop"}')


class SlowServer(ThreadedServer):
    """A raw HTTP/1.1 server on loopback answering each request by its path: `slowhdr` (the
    status line, then a header byte every 0.1 s for ever), `latehdr` (the headers after 0.4 s,
    one body byte 1.5 s later, never the rest), or `(status, body)`; other paths 404."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.closing = threading.Event()
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            data = b""
            while b"\r\n\r\n" not in data:
                if not (piece := conn.recv(65536)):
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            sizes = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            while len(body) < sum(sizes):  # all of it: closed with a request unread, the socket resets
                if not (piece := conn.recv(65536)):
                    return
                body += piece
            path = data.split(b" ", 2)[1].decode()
            what = self.routes.get(path, (404, "not found"))
            if what == "slowhdr":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.closing.wait(0.1):
                    conn.sendall(b"X")
            elif what == "latehdr":
                self.closing.wait(0.4)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                )
                self.closing.wait(1.5)
                conn.sendall(b" ")
                self.closing.wait()
            else:
                status, body = what
                kind = "application/json" if body.startswith(("{", "[")) else "text/plain"
                head = f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body.encode())

    def close(self) -> None:
        self.closing.set()
        super().close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for server in made:
        server.down() if isinstance(server, HttpEndpoint) else server.close()
    aloha_adapter.close_all()


def timed(fn: Callable[[], Any], limit: float = 5.0) -> tuple[Any, float]:
    """What `fn` returned or raised, and how long it took; a hang fails the test (not stalls it)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert out, f"still running after {limit}s"
    return out[0], time.monotonic() - started


def config(server: str, client: str, **aloha: str) -> Config:
    env = {"WIN_AUTOMATION_ALOHA_SERVER_URL": server + "/", "WIN_AUTOMATION_ALOHA_CLIENT_URL": client}
    env |= {f"WIN_AUTOMATION_ALOHA_{key.upper()}": value for key, value in aloha.items()}
    return load_config(None, env).config


@pytest.mark.parametrize(("mode", "kind", "status"), [("slowhdr", "silent", None), ("latehdr", "ok", 200)])
def test_a_probe_ends_at_its_timeout_however_slowly_the_answer_comes(
    servers: list, mode: str, kind: str, status: int | None
) -> None:
    """Headers trickled for ever: silent. Headers at 0.4 s, then the body stalls: the status is
    the answer, given at the timeout (not a read timeout after the headers, at 1 s)."""
    server = SlowServer({"/": mode})
    servers.append(server)
    probe, took = timed(lambda: probe_http(server.url + "/", 0.6))
    assert (probe.kind, probe.status) == (kind, status) and 0.55 < took < 0.85, (probe, took)


@pytest.mark.parametrize("mode", ["slowhdr", "latehdr"])
def test_an_aloha_health_check_ends_at_the_request_timeout_both_services_at_once(
    servers: list, mode: str
) -> None:
    server = SlowServer({"/": mode})
    servers.append(server)
    aloha = Aloha(config(server.url, server.url, request_timeout="800ms"))
    reports, took = timed(aloha.health)
    assert [(r.service, r.exit_code) for r in reports] == [("server", 3), ("client", 3)], reports
    assert all("did not answer within 0.8s" in (r.problem or "") for r in reports)
    assert 0.75 < took < 1.3, took  # one request_timeout for both, not two
    assert [(e["service"], e["error"]) for e in aloha.exchanges] == [
        ("server", "no answer within 0.8s"),
        ("client", "no answer within 0.8s"),
    ]


@pytest.mark.parametrize("why", ["deadline", "cancelled"])
def test_a_hung_poll_is_abandoned_at_the_tasks_deadline_or_on_cancel(servers: list, why: str) -> None:
    """The poll that hangs does not hold the task's deadline (or a cancel) for a request_timeout."""
    client = SlowServer({"/run_task": "slowhdr", "/stop": STOP_IDLE})
    servers.append(client)
    cancel = threading.Event()
    settings = {"request_timeout": "5s", "poll_interval": "50ms"}
    aloha = Aloha(config(client.url, client.url, **settings), cancelled=cancel.is_set)
    if why == "cancelled":
        threading.Timer(0.4, cancel.set).start()
    followed, took = timed(lambda: aloha.follow(0.4 if why == "deadline" else 30))
    assert (followed.reason, followed.stop_sent, followed.stop_answer) == (why, True, 400), followed
    assert took < 0.9, took
    poll, stop = aloha.exchanges
    assert (poll["route"], poll["error"]) == ("/run_task", "abandoned unanswered: the caller stopped waiting")
    assert (stop["route"], stop["status"]) == ("/stop", 400)


def test_a_big_busy_answer_on_every_poll_keeps_response_json_bounded(servers: list) -> None:
    """A 128 KiB 409 on every poll (the hunt's 15 MB grew the process to 6.8 GB): response.json
    keeps at most 64 KiB of each of the last 20 exchanges and 1 KiB of the others, not every
    answer whole."""
    busy = json.dumps({"status": "error", "message": "A task is already running", "pad": "x" * (128 << 10)})
    client = HttpEndpoint({"/run_task": (409, busy), "/stop": STOP_IDLE})
    servers.append(client)
    aloha = Aloha(config(client.url, client.url, poll_interval="10ms"))
    followed = aloha.follow(3.0)  # a poll every 10 ms: over 20 of them, however loaded the machine
    assert followed.reason == "deadline" and followed.polls > 20, followed
    *answered, last = [e for e in aloha.exchanges if e["route"] == "/run_task"]
    assert all(e["status"] == 409 and e["body_bytes"] == len(busy) for e in answered)
    # the last poll may be the one in flight when the deadline came, abandoned unanswered
    whole = (last["status"], last["body_bytes"]) == (409, len(busy))
    assert whole or (last.get("error") or "").startswith("abandoned unanswered"), last
    assert all(len(e["body"] or "") <= 1024 for e in aloha.exchanges[:-20])  # None: abandoned
    assert all(len(e["body"] or "") <= 64 * 1024 for e in aloha.exchanges[-20:])
    assert len(aloha.transcript()) < 21 * 64 * 1024 + len(aloha.exchanges) * 2048


def test_an_answer_nested_too_deep_is_a_one_line_refusal(servers: list) -> None:
    deep = '{"status": ' + "[" * 100_000 + "]" * 100_000 + "}"
    service = SlowServer({"/": (200, deep), "/run_task": (200, deep)})
    servers.append(service)
    aloha = Aloha(config(service.url, service.url))
    server, client = aloha.health()
    assert (server.ok, server.exit_code, client.ok) == (False, 1, True)
    assert "the Aloha server's GET / is not its health text" in (server.problem or "")
    with pytest.raises(ServiceRefused) as refused:
        aloha.start("Open Notepad")
    message = str(refused.value)
    assert "the Aloha client answered /run_task with 200 and a body that is not usable JSON" in message
    assert "nested more than 200 levels deep" in message and "\n" not in message


def test_a_request_given_stop_is_abandoned_within_a_tick(servers: list) -> None:
    server = SlowServer({"/": "slowhdr"})
    servers.append(server)
    service = aloha_adapter.aloha_service("server", server.url, 5.0)
    asked = time.monotonic()
    error, took = timed(
        lambda: service.request(
            "GET", "/", record=lambda _: None, stop=lambda: time.monotonic() > asked + 0.3
        )
    )
    assert isinstance(error, NoAnswer) and "abandoned unanswered" in str(error), error
    assert 0.3 < took < 0.7, took
