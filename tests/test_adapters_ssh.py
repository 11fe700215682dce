"""The SSH adapter against a real sshd: exec, streaming, faults, retries, authentication, host keys."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fixture_sshd import SshServer

from win_automation.adapters import ssh
from win_automation.errors import AuthError, ConnectError, HostKeyError


@pytest.fixture(autouse=True)
def _fresh_pool():  # type: ignore[no-untyped-def]
    ssh.close_all()
    yield
    ssh.close_all()


def test_exit_codes_and_pooled_connection_with_nodelay(ssh_config) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.get_connection(ssh_config)
    assert ssh.get_connection(ssh_config) is conn
    for code in (0, 1, 3, 255):
        out = conn.exec(f"echo out; echo err >&2; exit {code}")
        assert (out.exit_status, out.stdout, out.stderr, out.timed_out) == (code, b"out\n", b"err\n", False)
    sock = conn.transport().sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert "ssh-liveness" in {t.name for t in threading.enumerate()}  # keepalives that expect an answer


def test_ten_megabytes_on_stdout_and_stderr_at_once(ssh_config) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.get_connection(ssh_config)
    seen = {"out": 0, "err": 0}
    out = conn.exec(
        "head -c 10485760 /dev/zero | tr '\\0' o & head -c 10485760 /dev/zero | tr '\\0' e >&2; wait",
        timeout=60,
        on_stdout=lambda b: seen.__setitem__("out", seen["out"] + len(b)),
        on_stderr=lambda b: seen.__setitem__("err", seen["err"] + len(b)),
    )
    assert out.exit_status == 0
    assert len(out.stdout) == len(out.stderr) == 10485760 == seen["out"] == seen["err"]
    assert set(out.stdout) == {ord("o")} and set(out.stderr) == {ord("e")}


def test_output_streams_as_it_arrives_in_order(ssh_config) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.get_connection(ssh_config)
    conn.exec("true")  # connected before the clock starts
    events: list[tuple[str, bytes, float]] = []
    start = time.monotonic()
    conn.exec(
        "echo one; sleep 0.4; echo two >&2; sleep 0.4; echo three",
        on_stdout=lambda b: events.append(("out", b, time.monotonic() - start)),
        on_stderr=lambda b: events.append(("err", b, time.monotonic() - start)),
    )
    assert [(s, b) for s, b, _ in events] == [("out", b"one\n"), ("err", b"two\n"), ("out", b"three\n")]
    times = [t for _, _, t in events]
    assert times[1] - times[0] > 0.3 and times[2] - times[1] > 0.3  # each came when printed


def test_deadline_stops_waiting_and_reports_timed_out(ssh_config) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    out = ssh.get_connection(ssh_config).exec("echo started; sleep 30", timeout=0.5)
    assert out.timed_out and out.exit_status is None and out.stdout == b"started\n"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("stop", ["deadline", "cancel"])
def test_a_command_that_floods_its_output_still_stops_at_its_deadline_or_cancel(
    ssh_config, stop: str
) -> None:  # type: ignore[no-untyped-def]
    """`yes` writes faster than it is read: the channel's buffer never runs empty, and reading it
    must still give way to the deadline and the cancel check (it did not: 2 s ran for minutes)."""
    conn = ssh.get_connection(ssh_config)
    seen = [0]

    def slow_sink(data: bytes) -> None:  # a consumer slower than `yes` (a disk): never caught up
        seen[0] += len(data)
        time.sleep(0.002)

    flag = threading.Event()
    threading.Timer(1.0, flag.set).start()
    started = time.monotonic()
    out = conn.exec(
        "yes flood",
        timeout=1.0 if stop == "deadline" else None,
        cancelled=flag.is_set if stop == "cancel" else None,
        keep=False,
        on_stdout=slow_sink,
    )
    assert time.monotonic() - started < 3
    assert (out.timed_out, out.cancelled) == ((True, False) if stop == "deadline" else (False, True))
    assert seen[0] > 1024 * 1024  # it did flood


def test_connection_dropped_mid_command_then_reconnects(live_sshd: SshServer, ssh_config) -> None:  # type: ignore[no-untyped-def]
    conn = ssh.get_connection(ssh_config)
    conn.exec("true")
    killer = threading.Timer(0.5, live_sshd.drop_sessions)
    killer.start()
    with pytest.raises(ConnectError, match="lost while the command ran"):
        conn.exec("sleep 20", timeout=15)
    killer.join()
    assert conn.exec("echo back").stdout == b"back\n"  # a new connection, made on demand


def test_refused_then_server_comes_up_retry_succeeds(
    live_sshd: SshServer,
    ssh_config,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    live_sshd.stop()
    threading.Timer(0.8, live_sshd.start, kwargs={"wait": False}).start()
    caplog.set_level(logging.WARNING, logger="win_automation.retry")
    started = time.monotonic()
    assert ssh.get_connection(ssh_config).exec("echo up").stdout == b"up\n"
    retries = [r for r in caplog.records if r.getMessage() == "retrying after a transient failure"]
    assert 1 <= len(retries) <= 2 and [r.attempt for r in retries] == list(range(1, len(retries) + 1))  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    live_sshd.wait_listening()


def test_refused_three_times_is_a_connect_error(live_sshd: SshServer, ssh_config) -> None:  # type: ignore[no-untyped-def]
    live_sshd.stop()
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        ssh.get_connection(ssh_config).exec("true")
    assert 1.4 < time.monotonic() - started < 5  # waited 0.5 s and 1 s between the 3 attempts
    live_sshd.start()


def test_wrong_key_fails_once_without_retry(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    caplog.set_level(logging.WARNING, logger="win_automation.retry")
    with pytest.raises(AuthError, match=r"authentication as .* failed \(tried: key file\)"):
        ssh.get_connection(live_sshd.config(known_hosts, key_file=str(other))).exec("true")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_the_agents_keys_and_an_agent_that_does_not_answer(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ssh-agent holding the test key: its key authenticates. Paused (SIGSTOP), it is given
    ssh.connect_timeout, not for ever (paramiko's Agent waits without end), and said; the key
    file, tried first, still works. None running, or one without keys: said too."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with pytest.raises(AuthError, match=r"tried: agent \(it holds no keys\)"):
            ssh.connect_once(live_sshd.config(known_hosts, key_file=None, use_agent=True))
        subprocess.run(
            ["ssh-add", "-q", str(live_sshd.client_key)], check=True, env={"SSH_AUTH_SOCK": str(sock)}
        )
        cfg = live_sshd.config(known_hosts, key_file=None, use_agent=True, connect_timeout=1.0)
        ssh.connect_once(cfg).close()
        agent.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(
            AuthError, match=r"tried: agent \(no answer within 1s from the one at SSH_AUTH_SOCK\)"
        ):
            ssh.connect_once(cfg)
        assert time.monotonic() - started < 5
        ssh.connect_once(live_sshd.config(known_hosts, use_agent=True, connect_timeout=1.0)).close()
    finally:
        agent.send_signal(signal.SIGCONT)
        agent.kill()
        agent.wait(10)
    with pytest.raises(AuthError, match=r"tried: agent \(none answers at SSH_AUTH_SOCK: "):
        ssh.connect_once(cfg)  # its socket is gone with it
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(AuthError, match=r"tried: agent \(none running: SSH_AUTH_SOCK is not set\)"):
        ssh.connect_once(cfg)


def test_password_auth_and_secrets_never_in_errors(
    live_sshd: SshServer, known_hosts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = live_sshd.config(known_hosts, key_file=None, password=SshServer.PASSWORD)
    assert ssh.get_connection(good).exec("echo pw").stdout == b"pw\n"
    ssh.close_all()
    caplog.set_level(logging.DEBUG)
    bad = live_sshd.config(known_hosts, key_file=None, password="not-the-Secret-42")
    with pytest.raises(AuthError) as info:
        ssh.get_connection(bad).exec("true")
    assert "not-the-Secret-42" not in str(info.value) and "not-the-Secret-42" not in caplog.text


def test_encrypted_key_needs_its_passphrase(live_sshd: SshServer, known_hosts: Path, tmp_path: Path) -> None:
    key = tmp_path / "enc_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "Hush-phrase-1", "-f", str(key)], check=True)
    auth = live_sshd.dir / "authorized_keys"
    auth.write_text(auth.read_text() + key.with_suffix(".pub").read_text())
    with pytest.raises(AuthError, match="is encrypted: set WIN_AUTOMATION_SSH_KEY_PASSPHRASE"):
        ssh.get_connection(live_sshd.config(known_hosts, key_file=str(key))).exec("true")
    ssh.close_all()
    with pytest.raises(AuthError) as info:
        ssh.get_connection(
            live_sshd.config(known_hosts, key_file=str(key), key_passphrase="Wrong-phrase-2")
        ).exec("true")
    assert "Wrong-phrase-2" not in str(info.value)
    ssh.close_all()
    conn = ssh.get_connection(
        live_sshd.config(known_hosts, key_file=str(key), key_passphrase="Hush-phrase-1")
    )
    assert conn.exec("echo ok").stdout == b"ok\n"


def test_unknown_host_key_is_refused_with_its_fingerprint(live_sshd: SshServer, tmp_path: Path) -> None:
    cfg = live_sshd.config(tmp_path / "empty_known_hosts")
    with pytest.raises(HostKeyError) as info:
        ssh.get_connection(cfg).exec("true")
    message = str(info.value)
    assert "unknown host key" in message and live_sshd.fingerprint() in message and "ssh-ed25519" in message
    assert "win-automation ssh trust" in message


def test_changed_host_key_is_refused_loudly(live_sshd: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    blob = other.with_suffix(".pub").read_text().split()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{live_sshd.port} ssh-ed25519 {blob}\n")
    with pytest.raises(HostKeyError, match=r"HOST KEY CHANGED .* refusing to connect"):
        ssh.get_connection(live_sshd.config(known)).exec("true")


def test_pinned_fingerprint_is_enough_and_a_wrong_pin_refused(live_sshd: SshServer, tmp_path: Path) -> None:
    pinned = live_sshd.config(tmp_path / "none", host_key_fingerprint=live_sshd.fingerprint())
    assert ssh.get_connection(pinned).exec("echo pinned").stdout == b"pinned\n"
    ssh.close_all()
    wrong = live_sshd.config(tmp_path / "none", host_key_fingerprint="SHA256:" + "A" * 43)
    with pytest.raises(HostKeyError, match="HOST KEY MISMATCH"):
        ssh.get_connection(wrong).exec("true")


def test_closing_a_flooded_channel_never_ends_the_connection(ssh_config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """paramiko's channel close closes its pipe's fds, then marks it closed; a feed from the
    transport thread in between wrote to a closed fd: EBADF ended the whole transport ("Socket
    exception: Bad file descriptor"; 1 in ~10 capped `yes` floods under load). The window is
    widened here (a pause between the two) so that the flood's feeds always land in it."""
    import paramiko.pipe

    def slow_close(pipe: paramiko.pipe.PosixPipe) -> None:
        os.close(pipe._rfd)
        os.close(pipe._wfd)
        time.sleep(0.3)  # the transport thread keeps feeding the flood meanwhile
        pipe._closed = True

    monkeypatch.setattr(paramiko.pipe.PosixPipe, "close", slow_close)
    conn = ssh.get_connection(ssh_config)
    conn.exec("true")
    first = conn.transport()
    for _ in range(3):
        stop = threading.Event()
        flooded = lambda _data, stop=stop: stop.set()  # noqa: E731
        conn.exec("yes flood", on_stdout=flooded, cancelled=stop.is_set, keep=False)
        time.sleep(0.3)
        assert conn._transport is first and first.is_active(), "the connection was lost"
