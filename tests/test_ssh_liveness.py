"""Keepalives that expect an answer (win_automation.adapters.ssh_liveness), against the real sshd:
a server that goes silent under a running command (its session processes paused, as a paused VM;
or the link holding every packet) fails the command within one keepalive interval and one stall
bound, exit 3 and a job that says so, instead of waiting out the command's deadline; a client that
was paused itself keeps its connection and its command's result."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fixture_sshd import SshServer
from stall_proxy import StallProxy

from win_automation.adapters import ssh, ssh_liveness
from win_automation.adapters.sftp_wire import open_stream
from win_automation.errors import ConnectError
from win_automation.operations.transfers import get_file

QUICK = {"connect_timeout": 1, "keepalive_interval": 0.5}  # a probe every 0.5 s, answered within 1 s


def started_cmd(command: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`ssh run --shell cmd -- COMMAND` as its own process, its output read through pipes."""
    argv = [sys.executable, "-m", "win_automation", "ssh", "run", "--shell", "cmd", "--", command]
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_link_that_holds_every_packet_fails_the_running_command_within_the_bound(
    live_sshd: SshServer, known_hosts: Path
) -> None:
    proxy = StallProxy(live_sshd.port)
    cfg = live_sshd.config(
        known_hosts, port=proxy.port, host_key_fingerprint=live_sshd.fingerprint(), **QUICK
    )
    ssh.close_all()
    try:
        conn = ssh.get_connection(cfg)
        threading.Timer(1.0, proxy.hold).start()
        started = time.monotonic()
        with pytest.raises(ConnectError) as caught:
            conn.exec("sleep 30", timeout=60)
        took = time.monotonic() - started
    finally:
        ssh.close_all()
        proxy.close()
    assert str(caught.value) == (
        f"the connection to {cfg.user}@127.0.0.1:{proxy.port} stopped answering for 1s while the command"
        " ran (it may or may not have finished; not retried)"
    )
    assert took < 6, took  # the hold at 1 s, a probe within 0.5 s, unanswered for 1 s: not 30 s


@pytest.mark.parametrize("persist", ["0", "5m"], ids=["direct", "warm-helper"])
def test_a_paused_vm_under_a_running_command_is_exit_3_and_a_failed_job(
    live_sshd: SshServer, known_hosts: Path, cli, cli_env, tmp_path: Path, persist: str
) -> None:  # type: ignore[no-untyped-def]
    sleep = f"sleep 40.{uuid.uuid4().int % 10**6:06d}"
    env = {**cli_env, **live_sshd.env(known_hosts, **QUICK), "WIN_AUTOMATION_SSH_PERSIST": persist}
    call = started_cmd(f"echo go; {sleep}", env, tmp_path)
    try:
        assert call.stdout is not None and call.stdout.readline() == "go\n"
        with live_sshd.sessions_paused():
            stopped = time.monotonic()
            _, err = call.communicate(timeout=60)
            took = time.monotonic() - stopped
    finally:
        if call.poll() is None:
            call.kill()
        subprocess.run(["pkill", "-f", sleep], check=False)
    assert call.returncode == 3, err
    assert err.splitlines()[-1].startswith(
        f"error: step exec: the connection to {live_sshd.user}@127.0.0.1:"
    ), err
    assert "stopped answering for 1s while the command ran" in err and "Traceback" not in err, err
    assert took < 8, took
    (job,) = json.loads(cli("jobs", "list", "--json", env=env).stdout)
    assert job["state"] == "failed" and "stopped answering for 1s" in job["error"], job


def test_a_client_paused_longer_than_the_bound_keeps_its_connection(
    live_sshd: SshServer, known_hosts: Path, cli_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Only this process's running time counts. The server is paused first (a probe goes out
    unanswered), then the client for 5 s; the server is continued 0.5 s after the client: counted
    by the clock, the answer would be 6 s late (the bound is 3 s)."""
    slow = {**QUICK, "connect_timeout": 3}
    env = {**cli_env, **live_sshd.env(known_hosts, **slow), "WIN_AUTOMATION_SSH_PERSIST": "0"}
    call = started_cmd("echo go; sleep 7; echo done", env, tmp_path)
    assert call.stdout is not None and call.stdout.readline() == "go\n"
    with live_sshd.sessions_paused():
        time.sleep(0.7)  # a probe goes out (one every 0.5 s), unanswered
        call.send_signal(signal.SIGSTOP)
        time.sleep(5)
        call.send_signal(signal.SIGCONT)
        time.sleep(0.5)
    try:
        out, err = call.communicate(timeout=30)
    finally:
        if call.poll() is None:
            call.kill()
    assert call.returncode == 0, err
    assert out == "done\n"


def test_a_vm_silent_during_a_key_exchange_fails_the_command_within_the_bound(
    live_sshd: SshServer, known_hosts: Path
) -> None:
    """paramiko re-keys every 512 MiB; nothing else may be sent meanwhile, and its send waited out
    the exchange (30 s) then gave up, and the watch with it: the command waited out its deadline."""
    cfg = live_sshd.config(known_hosts, **QUICK)
    ssh.close_all()
    conn = ssh.get_connection(cfg)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            conn.exec("sleep 40", timeout=60)
        except ConnectError as exc:
            caught.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.5)
    try:
        with live_sshd.sessions_paused():
            started = time.monotonic()
            conn.transport()._send_kex_init()  # what paramiko's transport thread does at the 512 MiB mark
            runner.join(20)
            took = time.monotonic() - started
    finally:
        ssh.close_all()
    assert caught and "stopped answering for 1s while the command ran" in str(caught[0]), caught
    assert took < 6, took


def test_a_server_busy_sending_on_a_slow_link_is_alive_though_its_reply_comes_late(
    live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path
) -> None:
    """A download's data in flight (its window, the buffers on the way) comes before the
    keepalive's reply: at 256 KiB/s that reply took longer than the 1 s bound, and a transfer
    that was moving all along failed `stopped answering`. Any packet is an answer, as in OpenSSH."""
    source = remote_dir / "big.bin"
    source.write_bytes(bytes(range(256)) * 4096 * 2)  # 2 MiB: ~8 s at the link's rate
    proxy = StallProxy(live_sshd.port, down_rate=256 * 1024)
    cfg = live_sshd.config(
        known_hosts, port=proxy.port, host_key_fingerprint=live_sshd.fingerprint(), **QUICK
    )
    ssh.close_all()
    try:
        result = get_file(ssh.get_connection(cfg), str(source), tmp_path / "big.bin", remote_os="posix")
    finally:
        ssh.close_all()
        proxy.close()
    assert result.size_bytes == source.stat().st_size
    assert (tmp_path / "big.bin").read_bytes() == source.read_bytes()


def test_a_transfer_the_keepalives_ended_says_the_vm_stopped_answering(
    live_sshd: SshServer, known_hosts: Path
) -> None:
    """Not only `the SFTP channel closed`: why, as `ssh run` says it. The keepalives' end is
    played as _watch does it (its silence recorded, the transport closed): a real stall ends
    the transfer's own wait (`stalled: the VM sent nothing`) or this, whichever comes first."""
    ssh.close_all()
    try:
        conn = ssh.get_connection(live_sshd.config(known_hosts))
        stream = open_stream(conn, "SFTP download of x")
        transport = conn.transport()
        ssh_liveness._silent[transport] = 1.0
        transport.close()
        with pytest.raises(ConnectError) as caught:
            stream.packet_bytes()
    finally:
        ssh.close_all()
    assert str(caught.value) == (
        "the SFTP channel closed during the transfer: the connection stopped answering for 1s"
    )
