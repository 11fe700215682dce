"""Ctrl-C or SIGTERM (a KeyboardInterrupt) cutting a paramiko or httpx call short, against a
real sshd and a real HTTP server (the Aloha client's stand-in).

The signal's exception can land between a library's `lock.acquire()` and its `try` (CPython runs
a pending signal handler right after a C call returns; httpcore takes its pool's lock in a Python
`__enter__`), and the lock then stays held for good: every later request on that session or
client, its orderly close, even its garbage collection waits forever. CI saw it: `ssh put`
stopped by SIGTERM as it opened its part file, then hung removing it. Each test here leaves such
a lock held, as that interrupt did, and checks that nothing after it waits: the clean-up runs on
a new connection, and the process ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixture_aloha import AlohaWorld, aloha  # noqa: F401
from stall_proxy import ClosingPort

from win_automation.adapters import sftp, ssh
from win_automation.adapters.aloha import AlohaService
from win_automation.adapters.sftp_download import download

WAIT = 15.0  # far beyond a reconnect on loopback; "forever" otherwise


@pytest.fixture(autouse=True)
def _fresh_pool():  # type: ignore[no-untyped-def]
    ssh.close_all()
    yield
    ssh.close_all()


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() run in a thread: its result, or a failure when it is still waiting after `seconds`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # shown by the assertion below
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting after {seconds:g}s: a lock left held by the interrupt"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_an_sftp_request_cut_short_leaves_the_next_one_working(ssh_config, remote_dir: Path) -> None:  # type: ignore[no-untyped-def]
    part = remote_dir / "file.part"
    part.write_bytes(b"x")
    conn = ssh.SshConnection(ssh_config)
    with pytest.raises(KeyboardInterrupt), sftp.shared(conn) as client:
        client._lock.acquire()  # as the interrupt left it: held, never released
        raise KeyboardInterrupt
    within(WAIT, lambda: sftp.remove(conn, str(part)))  # the put's clean-up
    assert not part.exists()
    within(WAIT, conn.close)


def test_an_upload_cut_short_mid_write_removes_its_file_on_a_new_connection(
    ssh_config, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.SshConnection(ssh_config)
    target = remote_dir / "big.part"

    class Source:
        """Gives chunks until the second read, which is cut short as a signal would cut it."""

        reads = 0

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads == 2:
                conn.sftp()._lock.acquire()
                raise KeyboardInterrupt
            return b"y" * size

    with pytest.raises(KeyboardInterrupt):
        sftp.upload(conn, Source(), str(target), 1 << 20)  # type: ignore[arg-type]
    assert target.exists()
    within(WAIT, lambda: sftp.remove(conn, str(target)))
    assert not target.exists()


def test_a_command_cut_short_leaves_the_next_command_working(ssh_config) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.SshConnection(ssh_config)
    transport = conn.transport()

    def interrupt(chunk: bytes) -> None:
        transport.lock.acquire()  # the transport's own lock, held as the interrupt left it
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        conn.exec("echo started; sleep 30", on_stdout=interrupt)
    outcome = within(WAIT, lambda: conn.exec("echo next"))  # the kill after an interrupt
    assert (outcome.exit_status, outcome.stdout) == (0, b"next\n")
    assert conn.transport() is not transport
    within(WAIT, conn.close)


def test_a_download_cut_short_leaves_the_next_command_working(
    ssh_config, remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The pipelined download (its own SFTP channel): its channel is not closed, it is abandoned."""
    source = remote_dir / "big.bin"
    source.write_bytes(b"z" * (4 << 20))
    conn = ssh.SshConnection(ssh_config)

    def interrupt(done: int, total: int) -> None:
        for channel in conn.transport()._channels.values():
            channel.lock.acquire()  # the download's channel, as the interrupt can leave it
        raise KeyboardInterrupt

    def interrupted() -> None:
        with pytest.raises(KeyboardInterrupt), (tmp_path / "out.bin").open("wb") as out:
            download(conn, str(source), out, interrupt)

    within(WAIT, interrupted)
    outcome = within(WAIT, lambda: conn.exec("echo next"))
    assert (outcome.exit_status, outcome.stdout) == (0, b"next\n")
    within(WAIT, conn.close)


PROGRAM = """
import os, sys
from win_automation.adapters import ssh
from win_automation.config.schema import SSHConfig
from win_automation.cli.finish import run_to_end

def main():
    conn = ssh.get_connection(SSHConfig.model_validate_json(sys.argv[1]))
    client = conn.sftp()
    target = client.file(sys.argv[3], "wb")  # as sftp.upload's
    target.set_pipelined(True)
    target.write(b"x")
    client._lock.acquire()  # as an interrupt can leave it: held, never released
    conn.abandon(target)
    del target, client
    print("abandoned", flush=True)

if sys.argv[2] == "finish":
    status, _ = run_to_end(main)
    os._exit(status)
main()  # and the interpreter's teardown
"""


@pytest.mark.parametrize("ending", ["finish", "teardown"])
def test_a_process_with_an_abandoned_connection_ends(ssh_config, remote_dir: Path, ending: str) -> None:  # type: ignore[no-untyped-def]
    """The CLI ends through cli.finish (no teardown); a library user's process ends through the
    interpreter's teardown, which must not free the abandoned file: its finalizer would wait for
    the lock held for good (it did: the process never exited)."""
    config = ssh_config.model_dump_json()
    argv = [sys.executable, "-c", textwrap.dedent(PROGRAM), config, ending, str(remote_dir / "f")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the process did not end: {out} {err}") from None
    assert (proc.returncode, out, err) == (0, "abandoned\n", "")


def test_the_clean_up_after_an_interrupt_connects_once(ssh_config) -> None:  # type: ignore[no-untyped-def]
    """Whoever pressed Ctrl-C waits for the clean-up: against a VM that stopped answering it makes
    one connection attempt, not the retries (3 attempts, with waits between) of other calls."""
    closing = ClosingPort()  # no banner: each attempt fails (ConnectError, retried)
    mute = ssh_config.model_copy(update={"port": closing.port})
    try:
        for abandoned, attempts in ((False, 3), (True, 1)):
            closing.accepted = 0
            conn = ssh.SshConnection(mute)
            if abandoned:
                conn.abandon()
            with pytest.raises(ssh.ConnectError):
                within(WAIT, lambda: conn.exec("true"))  # noqa: B023  # run at once
            assert closing.accepted == attempts, (abandoned, closing.accepted)
    finally:
        closing.close()


def test_an_aloha_request_cut_short_leaves_the_tasks_stop_working(aloha: AlohaWorld) -> None:  # noqa: F811
    """After Ctrl-C mid-poll, the running task is sent /stop (operations.aloha, `abandon`)."""
    service = AlohaService("client", aloha.client.url, 5.0)
    pool = service._client._transport._pool  # type: ignore[attr-defined]

    def interrupt(request: object) -> None:
        pool._optional_thread_lock._lock.acquire()  # as the interrupt can leave it: held
        raise KeyboardInterrupt

    service._client.event_hooks["request"] = [interrupt]
    with pytest.raises(KeyboardInterrupt):
        service.request("POST", "/run_task", {"task": "x"}, record=lambda exchange: None)
    answer = within(WAIT, lambda: service.request("POST", "/stop", record=lambda e: None, once=True))
    assert answer.status in (200, 400)  # answered: a task stopped, or none running
    assert "POST /stop" in aloha.client.routes()
