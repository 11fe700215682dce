"""The Aloha stand-ins keep DESIGN.md's contract: the client drives a real sampling loop against
the stand-in server over HTTP (the tests of the workflow rely on it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from aloha_standin import AlohaClient, AlohaServer, Fault


@pytest.fixture
def pair() -> Iterator[tuple[AlohaServer, AlohaClient]]:
    server, client = AlohaServer(stop_after=3), AlohaClient(step_seconds=0.1)
    yield server, client
    client.stop()
    server.stop()


def _run(client: AlohaClient, server: AlohaServer, **extra: object) -> httpx.Response:
    body = {"task": "Open Notepad", "server_url": f"{server.url}/generate_action", **extra}
    return httpx.post(f"{client.url}/run_task", json=body)


def test_health_routes_and_missing_fields(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    answer = httpx.get(server.url + "/")
    assert (answer.status_code, answer.text) == (200, "Aloha API server is running")
    assert httpx.get(client.url + "/").status_code == 404  # the client has no GET route
    missing = httpx.post(server.url + "/generate_action", json={"query": "x"})
    assert missing.status_code == 400 and "screenshot" in missing.json()["error"]
    no_task = httpx.post(client.url + "/run_task", json={"max_steps": 2})
    assert no_task.status_code == 400 and client.tasks == []
    idle = httpx.post(client.url + "/stop")
    assert (idle.status_code, idle.json()["message"]) == (400, "No active task to stop")


def test_a_task_runs_steps_that_take_time_until_the_stop_action(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    client.step_seconds = 1.0  # the task lasts 2 s: the second request comes while it runs
    started = time.monotonic()
    answer = _run(client, server, trace_id="notepad-demo", selected_screen=1)
    assert answer.json() == {"status": "success", "message": "Task started"}
    busy = _run(client, server)
    assert (busy.status_code, busy.json()["message"]) == (409, "A task is already running")
    client.wait_idle()
    [task] = client.tasks
    assert (task.ended, task.steps, task.trace_id, task.screen) == ("stop-action", 3, "notepad-demo", 1)
    assert task.ended_at is not None and task.ended_at - started >= 2.0  # two steps acted, 1 s each
    asks = [body for method, path, body in server.requests if path == "/generate_action"]
    assert [len(b["action_history"]) for b in asks] == [0, 1, 2]
    assert all(b["query"] == "Open Notepad" and b["trace_name"] == "notepad-demo" for b in asks)
    assert _run(client, server).status_code == 200  # idle again: a new task starts


def test_max_steps_ends_a_task_and_stop_is_seen_between_steps(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    server.stop_after = 100
    _run(client, server, max_steps=2)
    client.wait_idle()
    assert (client.tasks[-1].ended, client.tasks[-1].steps) == ("max-steps", 2)
    client.step_seconds = 2.0  # the stop comes well within it (a loaded machine took 0.3 s)
    _run(client, server)
    time.sleep(0.1)  # inside the first step
    assert httpx.post(client.url + "/stop").status_code == 200
    client.wait_idle()
    assert (client.tasks[-1].ended, client.tasks[-1].steps) == ("stopped", 1)


@pytest.mark.parametrize(
    ("plan", "ended"),
    [("error-action", "error-action"), ("html500", "server-error-500"), ("not-json", "malformed-answer")],
)
def test_a_failing_model_ends_the_task_at_once_though_run_task_said_200(pair, plan: str, ended: str) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    server.plan = plan
    assert _run(client, server).status_code == 200
    client.wait_idle()
    assert (client.tasks[-1].ended, client.tasks[-1].steps) == (ended, 0)
    if plan == "html500":
        page = httpx.post(server.url + "/generate_action", json={"screenshot": "x", "query": "y"})
        assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")


def test_an_unreachable_server_ends_the_task_and_faults_are_served_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    _run(client, server, server_url="http://127.0.0.1:9/generate_action")
    client.wait_idle()
    assert client.tasks[-1].ended == "server-unreachable"
    client.faults += [
        Fault("/run_task", status=503, body="busy", content_type="text/plain"),
        Fault(drop=True),
    ]
    assert _run(client, server).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        _run(client, server)
    assert _run(client, server).status_code == 200


@pytest.mark.parametrize("gzip", [False, True])
@pytest.mark.parametrize("size", [3, 4, 65_539, 1_000_001])
def test_a_huge_body_fault_is_json_of_exactly_its_size(pair, size: int, gzip: bool) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    fault = Fault("/run_task", status=200, content_type="application/json", size=size, gzip=gzip)
    client.faults.append(fault)
    answer = _run(client, server)
    assert len(answer.content) == size
    if gzip:
        assert answer.headers["content-encoding"] == "gzip" and "content-length" not in answer.headers
        assert answer.num_bytes_downloaded < size or size < 100
    else:
        assert int(answer.headers["content-length"]) == size
    assert set(answer.json()) == {0} and fault.sent == size - 3  # all but "[" and "0]"
