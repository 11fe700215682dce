"""Transfers under faults, against the real sshd: a server that stalls mid-transfer (a proxy that
stops forwarding; TCP stays open) fails within the stall bound with exit 3 and leaves no partial
file; so does one whose sshd session process is paused (SIGSTOP); a process killed mid-transfer
leaves partial files that the next transfer removes; a server that accepts TCP and never sends a
banner is a connection fault, retried, then exit 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tmpfs
from fixture_sshd import SshServer, hash_threads
from stall_proxy import ClosingPort, StallProxy

from win_automation.adapters import ssh
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError, OperationTimeout, StorageError
from win_automation.operations import transfers
from win_automation.partfiles import HOST_TAG, is_stale, owner_tag

STALL = {"connect_timeout": 1, "keepalive_interval": 0.5}  # a stall bound of 1 s


@pytest.fixture
def proxied(live_sshd: SshServer, known_hosts: Path):  # type: ignore[no-untyped-def]
    proxies: list[StallProxy] = []

    def make(**budgets: int) -> SSHConfig:
        proxy = StallProxy(live_sshd.port, **budgets)
        proxies.append(proxy)
        return live_sshd.config(
            known_hosts, port=proxy.port, host_key_fingerprint=live_sshd.fingerprint(), **STALL
        )

    ssh.close_all()
    yield make
    ssh.close_all()
    for proxy in proxies:
        proxy.close()


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".wa-part-" in p.name)


def written(folder: Path) -> bool:
    return any((folder / name).stat().st_size > 0 for name in parts(folder))


def test_a_stalled_download_fails_within_the_bound_and_leaves_nothing(proxied, remote_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = remote_dir / "big.bin"
    source.write_bytes(os.urandom(8 << 20))
    cfg = proxied(down_budget=1 << 20)
    local = tmp_path / "big.bin"
    started = time.monotonic()
    with pytest.raises(ConnectError, match="stalled: the VM sent nothing for 1s"):
        transfers.get_file(ssh.get_connection(cfg), str(source), local, remote_os="posix")
    assert time.monotonic() - started < 8
    assert not local.exists() and parts(tmp_path) == []


def test_a_stalled_upload_fails_within_the_bound(proxied, remote_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(8 << 20))
    target = remote_dir / "up.bin"
    cfg = proxied(up_budget=2 << 20)
    started = time.monotonic()
    with pytest.raises(ConnectError, match="stalled"):
        transfers.put_file(ssh.get_connection(cfg), local, str(target), remote_os="posix")
    assert time.monotonic() - started < 10
    assert not target.exists()


def test_the_cli_exits_3_on_a_stall(live_sshd: SshServer, known_hosts, remote_dir, tmp_path, cli) -> None:  # type: ignore[no-untyped-def]
    (remote_dir / "big.bin").write_bytes(os.urandom(8 << 20))
    proxy = StallProxy(live_sshd.port, down_budget=1 << 20)
    try:
        env = live_sshd.env(
            known_hosts, port=proxy.port, host_key_fingerprint=live_sshd.fingerprint(), **STALL
        )
        res = cli("ssh", "get", str(remote_dir / "big.bin"), str(tmp_path / "out.bin"), env=env, timeout=30)
    finally:
        proxy.close()
    assert res.code == 3, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: SFTP download of")
    assert "stalled" in res.stderr and not (tmp_path / "out.bin").exists() and parts(tmp_path) == []


@pytest.mark.parametrize("direction", ["get", "put"])
def test_a_paused_sshd_session_fails_the_transfer_within_one_stall_bound(  # type: ignore[no-untyped-def]
    live_sshd: SshServer, known_hosts, remote_dir, tmp_path, cli_env, direction: str
) -> None:
    big = (remote_dir if direction == "get" else tmp_path / "src") / "big.bin"
    big.parent.mkdir(exist_ok=True)
    with big.open("wb") as out:
        for _ in range(32):
            out.write(os.urandom(8 << 20))  # 256 MiB: still moving when the session is paused
    big.chmod(0o644)
    if direction == "get":
        args, where = ["get", str(big), str(tmp_path / "big.bin")], tmp_path
    else:
        args, where = ["put", str(big), str(remote_dir / "big.bin")], remote_dir
    bound = 4  # connect_timeout 4 s: a second wait of it (the upload's close) shows
    env = {
        **cli_env,
        **live_sshd.env(known_hosts, connect_timeout=bound, keepalive_interval=1),
        "WIN_AUTOMATION_SSH_PERSIST": "0",
    }
    cmd = [sys.executable, "-m", "win_automation", "ssh", *args]
    call = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not written(where) and call.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert written(where), "the transfer never started"
        with live_sshd.sessions_paused():
            stopped = time.monotonic()
            _, err = call.communicate(timeout=60)
            took = time.monotonic() - stopped
    finally:
        if call.poll() is None:
            call.kill()
    assert call.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith("error: SFTP ") and "stalled" in err, err
    assert took < bound + 3, took  # one stall bound (an orderly close of the upload took a second)
    deadline = time.monotonic() + 30
    while parts(where) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert parts(where) == [] and not (where / "big.bin").exists()


KILLED_CHILD = """
import sys
from pathlib import Path
from win_automation.adapters import ssh
from win_automation.config.schema import SSHConfig
from win_automation.operations import transfers
cfg = SSHConfig.model_validate_json(sys.argv[1])
conn = ssh.get_connection(cfg)
if sys.argv[2] == "get":
    transfers.get_file(conn, sys.argv[3], Path(sys.argv[4]), remote_os="posix")
else:
    transfers.put_file(conn, Path(sys.argv[3]), sys.argv[4], remote_os="posix")
"""


@pytest.mark.parametrize("direction", ["get", "put"])
def test_a_transfer_killed_mid_way_leaves_partials_that_the_next_one_removes(  # type: ignore[no-untyped-def]
    proxied, remote_dir, tmp_path, direction: str
) -> None:
    local, remote = tmp_path / "file.bin", remote_dir / "file.bin"
    (remote if direction == "get" else local).write_bytes(os.urandom(8 << 20))
    # The first connection stalls after 1 MiB: the child is killed while its partial file exists.
    cfg = proxied(**({"down_budget": 1 << 20} if direction == "get" else {"up_budget": 2 << 20}))
    slow = cfg.model_copy(update={"connect_timeout": 60.0, "keepalive_interval": 30.0})
    args = (str(remote), str(local)) if direction == "get" else (str(local), str(remote))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, slow.model_dump_json(), direction, *args],
        stdout=subprocess.DEVNULL,
    )
    folder = tmp_path if direction == "get" else remote_dir
    deadline = time.monotonic() + 20
    # Data in the partial file: the child is connected (through the proxy's first, throttled
    # connection) and mid-transfer. A partial file alone is made before it connects, and a child
    # killed then would leave the throttled connection to the next transfer.
    while not written(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written(folder), "the child never wrote into its partial file"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    leftover = parts(folder)
    assert len(leftover) == 1 and f"-{child.pid}-" in leftover[0] and HOST_TAG in leftover[0]
    # The next transfer to the same target (the proxy forwards later connections) removes it; its
    # stall bound is a normal one (a 1 s bound trips on a loaded 2-core machine).
    conn = ssh.get_connection(cfg.model_copy(update={"connect_timeout": 10.0}))
    if direction == "get":
        transfers.get_file(conn, str(remote), local, remote_os="posix")
    else:
        transfers.put_file(conn, local, str(remote), remote_os="posix")
    assert parts(folder) == [] and local.read_bytes() == remote.read_bytes()


def test_staleness_rules() -> None:
    now = time.time()
    mine = f"x.wa-part-{owner_tag()}"
    assert not is_stale(mine, now, now)  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert is_stale(f"x.wa-part-{HOST_TAG}-{dead.pid}-0123abcd", now, now)
    other_host = "x.wa-part-00000000-1-0123abcd"
    assert not is_stale(other_host, now, now) and is_stale(other_host, now - 2 * 86400, now)
    assert not is_stale("x.wa-part-untagged", now - 10 * 86400, now)  # not ours: never touched


@pytest.mark.parametrize(
    "args",
    [["ssh", "run", "--shell", "cmd", "--", "echo hi"], ["ssh", "trust", "--yes"]],
    ids=["run", "trust"],
)
def test_a_server_that_sends_no_banner_is_retried_then_exit_3(live_sshd, known_hosts, cli, args) -> None:  # type: ignore[no-untyped-def]
    proxy = StallProxy(live_sshd.port, silent=True)
    try:
        env = live_sshd.env(known_hosts, port=proxy.port, connect_timeout="500ms")
        started = time.monotonic()
        res = cli(*args, env=env, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert res.code == 3, res.stderr
    assert "did not answer the SSH handshake within 500ms" not in res.stderr  # durations print as seconds
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "accepted the connection but did not answer the SSH handshake within 0.5s"
            " (is an SSH server listening there?)"
        )
    )
    assert proxy.accepted == 3 and res.stderr.count("retrying after a transient failure") == 2
    assert "wait_ms=500" in res.stderr and "wait_ms=1000" in res.stderr
    assert 3 * 0.5 + 1.5 <= elapsed < 15
    assert "Traceback" not in res.stderr and "paramiko" not in res.stderr


@pytest.mark.parametrize("after", [0.0, 0.2], ids=["at-once", "reset-after-our-banner"])
def test_a_port_that_accepts_and_closes_at_once_is_named_as_such_not_as_a_silent_one(
    live_sshd, known_hosts, cli, after: float
) -> None:  # type: ignore[no-untyped-def]
    """A QEMU port forward accepts for a guest whose sshd is not up yet, then closes: that was
    `did not answer the SSH handshake within 10s`, said at once, of a wait that never happened."""
    closing = ClosingPort(after)
    try:
        env = live_sshd.env(known_hosts, port=closing.port, connect_timeout="10s")
        started = time.monotonic()
        res = cli("ssh", "run", "--shell", "cmd", "--", "echo hi", env=env, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        closing.close()
    assert res.code == 3, res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "accepted the connection and closed it before any SSH handshake (is the VM's SSH server up"
            " yet? a port forward, as QEMU's, accepts for it)"
        )
    ), res.stderr
    assert "within 10s" not in res.stderr
    assert closing.accepted == 3 and elapsed < 10  # retried (waits 0.5 s, 1 s), no connect timeout waited


def test_a_transfer_that_never_stalls_still_has_a_deadline(proxied, remote_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from win_automation.errors import OperationTimeout

    source = remote_dir / "slow.bin"
    source.write_bytes(os.urandom(1 << 20))
    cfg = proxied(down_rate=256 * 1024).model_copy(update={"command_timeout": 0.5})  # 1.5 s for 1 MiB
    local = tmp_path / "slow.bin"
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match=r"passed its deadline of 1.5s"):
        transfers.get_file(ssh.get_connection(cfg), str(source), local, remote_os="posix")
    assert 1.4 < time.monotonic() - started < 4
    assert not local.exists() and parts(tmp_path) == []


def test_a_failed_get_closes_the_vms_hash(live_sshd, known_hosts, slow_to_hash, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The VM hashes the file while it downloads. A download that fails (here the local disk
    fills) closes the hash's channel, which ends a hash on Windows; it ran on for as long as the
    file takes to hash (up to 600 s), holding the VM's disk and a session of the connection."""
    cfg = live_sshd.config(known_hosts)
    with tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(StorageError, match=r"disk is full|No space left"):
            transfers.get_file(ssh.get_connection(cfg), str(slow_to_hash), small / "x.bin", remote_os="posix")
        ended = time.monotonic()
        while hash_threads() and time.monotonic() - ended < 1.5:
            time.sleep(0.05)
        assert hash_threads() == [], "the VM's hash went on after its download failed"
        assert list(small.iterdir()) == []
    ssh.close_all()


def test_the_vms_hash_of_an_upload_is_within_the_puts_deadline(
    live_sshd, known_hosts, remote_dir, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A VM that takes long to hash the upload (paused while it hashed, overloaded): the put waited
    for HASH_TIMEOUT (600 s) whatever its own deadline (here 1 s + 1 s per MiB); the hash stands
    in as a remote `sleep`, the upload before it is real."""
    monkeypatch.setattr(transfers, "sha256_command", lambda remote, remote_os: "sleep 29.123")
    source = tmp_path / "one.bin"
    source.write_bytes(os.urandom(1 << 20))
    cfg = live_sshd.config(known_hosts, command_timeout=1)
    started = time.monotonic()
    with pytest.raises(
        OperationTimeout, match=r"the VM did not hash .* within [12]s \(paused or overloaded\?\)"
    ):
        transfers.put_file(ssh.get_connection(cfg), source, str(remote_dir / "one.bin"), remote_os="posix")
    assert time.monotonic() - started < 4
    assert list(remote_dir.iterdir()) == []  # the part file went too
    ssh.close_all()
    subprocess.run(["pkill", "-f", "sleep 29.123"], check=False)  # a Linux sshd leaves it running


def test_a_put_onto_a_full_vm_disk_names_the_target_and_the_disk(
    cli, live_sshd, known_hosts, remote_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """It said `remote path TARGET.wa-part-...: Failure`: a file nobody asked for, and SFTP's
    generic word for what sftp-server answers a write that found the disk full."""
    source = tmp_path / "two.bin"
    source.write_bytes(os.urandom(2 << 20))
    with tmpfs(remote_dir / "small", "1m") as small:
        small.chmod(0o777)  # the login writes there
        target = small / "two.bin"
        res = cli("ssh", "put", str(source), str(target), env=live_sshd.env(known_hosts, persist="0"))
        # the refused write, or (pipelined writes whose refusals paramiko drops) the short file
        assert res.code == 1 and res.stderr.count("\n") == 1, res.stderr
        assert str(target) in res.stderr and "disk full?" in res.stderr and ".wa-part-" not in res.stderr
        assert list(small.iterdir()) == []
