"""Answers no real QEMU sends, from a small QMP server on a real Unix socket: each ends in one line
naming the socket, the command and what was wrong (ServiceRefused, exit 1), never a traceback; a GUI
job whose screenshots meet them still succeeds; a socket that never greets is not retried."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from win_automation.config import Config, load_config
from win_automation.definition import Step, StepContext, Workflow
from win_automation.engines.dispatch import run_job
from win_automation.errors import OperationTimeout, ServiceRefused
from win_automation.operations.qemu import Qemu, status

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""},'
    b' "capabilities": []}}\r\n'
)
Answer = Callable[[dict[str, Any], bytes], bytes]  # (the command, its id as JSON) -> the lines sent back


def returns(value: object) -> Answer:
    return lambda msg, mid: b'{"return": ' + json.dumps(value).encode() + b', "id": ' + mid + b"}\r\n"


def raw(text: bytes) -> Answer:
    return lambda msg, mid: text.replace(b"ID", mid) + b"\r\n"


class FakeQmp:
    """Greets as QEMU does, accepts qmp_capabilities, answers every other command with `answer`."""

    def __init__(self, path: Path, answer: Answer, greeting: bytes = GREETING) -> None:
        self.path, self.answer, self.greeting = path, answer, greeting
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Commands come as a stream of JSON objects with no separator (as QEMU reads them)."""
        decoder, buffer = json.JSONDecoder(), ""
        try:
            conn.sendall(self.greeting)
            while data := conn.recv(65536):
                buffer += data.decode()
                while buffer.strip():
                    try:
                        msg, end = decoder.raw_decode(buffer.lstrip())
                    except ValueError:
                        break  # the rest of the object is still on its way
                    buffer = buffer.lstrip()[end:]
                    mid = json.dumps(msg.get("id")).encode()
                    if msg["execute"] == "qmp_capabilities":
                        conn.sendall(b'{"return": {}, "id": ' + mid + b"}\r\n")
                    else:
                        conn.sendall(self.answer(msg, mid))
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[Callable[..., FakeQmp]]:
    servers: list[FakeQmp] = []

    def start(answer: Answer, greeting: bytes = GREETING) -> FakeQmp:
        servers.append(FakeQmp(tmp_path / f"qmp{len(servers)}.sock", answer, greeting))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def config_for(env: dict[str, str], server: FakeQmp | Path, timeout: str = "5s") -> Config:
    path = server if isinstance(server, Path) else server.path
    extra = {"WIN_AUTOMATION_VM_QMP_SOCKET": str(path), "WIN_AUTOMATION_VM_QMP_TIMEOUT": timeout}
    return load_config(None, {**env, **extra}).config


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr and stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    return stderr.strip()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (returns([]), "an array, not an object"),
        (returns("running"), "a string, not an object"),
        (returns({"status": "running"}), "running is missing"),
        (returns({"status": "running", "running": "yes"}), "running is a string, not a boolean"),
        (raw(b'{"return": {"status": "\xff\xfe", "running": true}, "id": ID}'), r"not UTF-8 \(invalid start"),
        (raw(b'{"return": ' + b"[" * 5000 + b"]" * 5000 + b', "id": ID}'), "JSON nested too deep to read"),
        (raw(b'{"return": {"status": "' + b"A" * (20 << 20) + b'"}, "id": ID}'), "a line over the 10 MiB"),
        (raw(b"<html>oops</html>"), "not JSON"),
        (raw(b"[1, 2]"), "JSON that is not an object"),
        (raw(b'{"id": ID}'), "neither 'return' nor 'error'"),
    ],
    ids=["list", "string", "no-running", "wrong-type", "non-utf8", "deep", "20MiB", "html", "array", "empty"],
)
def test_a_corrupt_status_answer_is_one_error_naming_socket_command_and_problem(
    qmp: Callable[..., FakeQmp], cli_env: dict[str, str], answer: Answer, problem: str
) -> None:
    server = qmp(answer)
    with pytest.raises(ServiceRefused) as caught:
        status(config_for(cli_env, server))
    expected = rf"QEMU monitor {re.escape(str(server.path))}: unusable QMP answer to query-status: {problem}"
    assert re.match(expected, str(caught.value)) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 1 and not caught.value.transient


def test_corrupt_answers_on_the_cli_and_in_doctor(qmp: Callable[..., FakeQmp], cli: Any) -> None:
    bad_utf8 = qmp(raw(b'{"return": {"x": "\xff"}, "id": ID}'))
    done = cli("vm", "status", env={"WIN_AUTOMATION_VM_QMP_SOCKET": str(bad_utf8.path)})
    assert done.code == 1 and one_error(done.stderr).endswith(
        "query-status: not UTF-8 (invalid start byte at byte 18)"
    )

    block: list[object] = [{"device": "d0", "inserted": {"node-name": "n0", "drv": "qcow2", "image": {}}}]
    for snapshots, problem in (
        ([{"id": "1"}], "snapshots[0].name is missing"),
        ("oops", "a string, not an array"),
    ):
        block[0]["inserted"]["image"]["snapshots"] = snapshots  # type: ignore[index]
        server = qmp(returns(block))
        done = cli("vm", "snapshot", "list", env={"WIN_AUTOMATION_VM_QMP_SOCKET": str(server.path)})
        assert done.code == 1 and problem in one_error(done.stderr) and "query-block" in done.stderr

    listed = qmp(returns([]))
    started = time.monotonic()
    run = cli("doctor", "--json", "--check", "vm", env={"WIN_AUTOMATION_VM_QMP_SOCKET": str(listed.path)})
    item = json.loads(run.stdout)["checks"][0]
    assert run.code == 1 and (item["name"], item["status"]) == ("vm", "fail"), run.stdout
    assert item["cause"].endswith("unusable QMP answer to query-status: an array, not an object")
    assert "-qmp socket" in item["fix"] and item["latency_ms"] < 1000 and time.monotonic() - started < 5


def test_a_corrupt_greeting_is_not_retried(
    qmp: Callable[..., FakeQmp], cli_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="win_automation.retry")
    for greeting, problem in (
        (b'{"QMP": "\xff"}\r\n', "not UTF-8"),
        (b'{"hello": 1}\r\n', "not a QMP greeting"),
    ):
        server = qmp(returns({}), greeting)
        with pytest.raises(ServiceRefused, match=f"unusable QMP answer to the greeting: {problem}"):
            status(config_for(cli_env, server))
    assert not caplog.records  # no "retrying after a transient failure"


def test_an_event_ahead_of_the_greeting_is_passed_over(
    qmp: Callable[..., FakeQmp], cli_env: dict[str, str]
) -> None:
    """QEMU sends a job's event before its greeting when the job ends as a client connects (the
    suite saw `unusable QMP answer to the greeting: not a QMP greeting` once, after a snapshot
    load that one command gave up and the next one met ending)."""
    event = (
        b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "JOB_STATUS_CHANGE",'
        b' "data": {"status": "concluded", "id": "wa-load-1"}}\r\n'
    )
    stale = b'{"return": {}, "id": "previous-client"}\r\n'
    server = qmp(returns({"status": "running", "running": True}), event + stale + event + GREETING)
    assert status(config_for(cli_env, server)).status == "running"


def test_a_socket_that_never_greets_costs_one_timeout_not_three(
    cli_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture, cli: Any
) -> None:
    """Accepts (the backlog) and never speaks, like a QEMU stopped with SIGSTOP."""
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(path))
    mute.listen(8)
    caplog.set_level(logging.WARNING, logger="win_automation.retry")
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match=r"no answer to the greeting within 1s"):
            status(config_for(cli_env, path, timeout="1s"))
        assert time.monotonic() - started < 1.4  # three attempts took 1 + 0.5 + 1 + 1 + 1 = 4.5 s
        assert not caplog.records
        env = {"WIN_AUTOMATION_VM_QMP_SOCKET": str(path), "WIN_AUTOMATION_VM_QMP_TIMEOUT": "1s"}
        done = cli("vm", "status", env=env)
        assert done.code == 124 and "no answer to the greeting" in one_error(done.stderr)
    finally:
        mute.close()


class In(BaseModel):
    pass


class Out(BaseModel):
    ok: bool = True


def look(inp: In, ctx: StepContext) -> Out:
    return Out()


desktop = Workflow(name="desktop-look", input=In, gui=True, steps=(Step("look", look, Out),))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big")


def screendump_then_garbage(msg: dict[str, Any], mid: bytes) -> bytes:
    """Writes the PNG and answers, as QEMU does, then sends a line that is not UTF-8."""
    Path(msg["arguments"]["filename"]).write_bytes(PNG)
    return b'{"return": {}, "id": ' + mid + b'}\r\n{"event": "\xff"}\r\n'


def test_a_gui_job_whose_screenshots_get_non_utf8_answers_succeeds_with_a_warning(
    qmp: Callable[..., FakeQmp], cli_env: dict[str, str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    server = qmp(raw(b'{"return": {"x": "\xff\xfe"}, "id": ID}'))  # to screendump, as to everything
    config = config_for(cli_env, server)
    caplog.set_level(logging.WARNING, logger="win_automation.operations.qemu")
    outcome = run_job(config, desktop, In(), engine="local")
    assert (outcome.state, outcome.exit_code) == ("succeeded", 0)
    warned = [r for r in caplog.records if r.getMessage() == "could not keep the VM's screen"]
    assert [r.file for r in warned] == ["before.png", "after.png"]
    assert all("unusable QMP answer to screendump: not UTF-8" in r.err for r in warned)
    assert not list((config.artifacts.out_dir / outcome.job_id).glob("*.png"))
    with pytest.raises(ServiceRefused, match="screendump: not UTF-8"):  # not "give a folder it can write"
        Qemu(config).screenshot(tmp_path / "x.png")


def test_a_corrupt_line_after_a_good_answer_loses_no_screen(
    qmp: Callable[..., FakeQmp], cli_env: dict[str, str]
) -> None:
    """The session's close meets the reader's failure (QmpSession.close): it is not raised."""
    config = config_for(cli_env, qmp(screendump_then_garbage))
    outcome = run_job(config, desktop, In(), engine="local")
    assert (outcome.state, outcome.exit_code) == ("succeeded", 0)
    kept = sorted(p.name for p in (config.artifacts.out_dir / outcome.job_id).glob("*.png"))
    assert kept == ["after.png", "before.png"]


def test_a_corrupt_line_between_commands_is_named_by_the_next_one(qmp: Callable[..., FakeQmp]) -> None:
    from win_automation.adapters.qemu import qmp_session

    status_then_garbage = raw(
        b'{"return": {"status": "running", "running": true}, "id": ID}\r\n{"event": "\xff"}'
    )
    server = qmp(status_then_garbage)
    with qmp_session(server.path, timeout=5) as session:
        assert session.execute("query-status")["running"] is True
        time.sleep(0.1)  # the reader meets the corrupt line and stops
        with pytest.raises(ServiceRefused, match="unusable QMP answer to query-status: not UTF-8"):
            session.execute("query-status")
