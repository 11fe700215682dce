"""Local port forwards (`ssh -L`) over the pooled SSH connection to the VM's own loopback.

    host, port = forward(ssh_config, 7887)        # ("127.0.0.1", 40123): reach the VM's 127.0.0.1:7887

Every TCP connection made to the returned local endpoint is carried over the VM's pooled SSH
connection (adapters.ssh.get_connection) as a `direct-tcpip` channel to `remote_host:remote_port`
as the VM sees it, so a VM that exposes only SSH still serves Aloha and the Playwright server.

- One listener per (VM, remote host, remote port) per process, on 127.0.0.1 and a free port, made
  on first use and reused; each accepted connection opens its own channel (reconnecting the SSH
  connection when it dropped) and one thread copies bytes both ways, half-closes included.
- Faults are ConnectError: the SSH connection cannot be made, or the VM refuses the channel
  (nothing listens on that port there, or its sshd forbids forwarding). Creating a listener opens
  one channel first, so `forward` itself reports such a refusal; later, a refused channel closes
  the local connection at once with no bytes (logged), which HTTP clients see as a dropped
  connection and their adapters translate.
- The listener accepts any local process, like `ssh -L` does: the forward is as private as the
  host's loopback.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

import paramiko

from win_automation.adapters.ssh import get_connection
from win_automation.config.schema import SSHConfig
from win_automation.errors import ConnectError

log = logging.getLogger(__name__)

CHUNK = 256 * 1024

Key = tuple[str, int, str, str, int]


def open_channel(cfg: SSHConfig, remote: tuple[str, int], origin: tuple[str, int]) -> paramiko.Channel:
    """A `direct-tcpip` channel to `remote` (as the VM sees it) on the pooled connection."""
    for attempt in (1, 2):
        transport = get_connection(cfg).transport()
        try:
            return transport.open_channel("direct-tcpip", remote, origin, timeout=cfg.connect_timeout)
        except paramiko.ChannelException as exc:
            raise ConnectError(
                f"the VM {cfg.host}:{cfg.port} refused to forward to its {remote[0]}:{remote[1]} "
                f"({exc.text or 'open failed'}; nothing listening there, or forwarding disabled)"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if attempt == 2 or transport.is_active():
                raise ConnectError(
                    f"cannot forward to {remote[0]}:{remote[1]} over SSH to {cfg.host}:{cfg.port}: {exc}"
                ) from exc
    raise AssertionError("unreachable")


def _pump(sock: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until both directions are closed (or either side fails)."""
    ends: list[socket.socket | paramiko.Channel] = [sock, channel]
    try:
        while ends:
            ready, _, _ = select.select(ends, [], [])
            if sock in ready:
                data = sock.recv(CHUNK)
                if data:
                    channel.sendall(data)
                else:
                    channel.shutdown_write()
                    ends.remove(sock)
            if channel in ready:
                data = channel.recv(CHUNK)
                if data:
                    sock.sendall(data)
                else:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    ends.remove(channel)
    except (OSError, paramiko.SSHException, EOFError):
        pass
    finally:
        channel.close()
        sock.close()


class Forward:
    """One listener on 127.0.0.1 whose connections go to `remote` on the VM of `cfg`."""

    def __init__(self, cfg: SSHConfig, remote: tuple[str, int]) -> None:
        self.cfg = cfg
        self.remote = remote
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.address: tuple[str, int] = ("127.0.0.1", int(self._listener.getsockname()[1]))
        self._thread = threading.Thread(target=self._accept, name=f"forward-{remote[1]}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._listener.accept()
            except OSError:
                return  # closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(client, peer), daemon=True).start()

    def _serve(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = open_channel(self.cfg, self.remote, peer)
        except ConnectError as exc:
            log.warning(
                "forwarded connection refused; closing it",
                extra={"op": "ssh.forward", "remote_port": self.remote[1], "err": str(exc)},
            )
            client.close()
            return
        _pump(client, channel)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


_FORWARDS: dict[Key, Forward] = {}
_LOCK = threading.Lock()


def forward(ssh_config: SSHConfig, remote_port: int, remote_host: str = "127.0.0.1") -> tuple[str, int]:
    """The local (127.0.0.1, port) that reaches `remote_host:remote_port` on the VM over SSH.

    Made on first use (after one channel has shown the VM accepts it: ConnectError otherwise),
    then reused for the life of the process."""
    key: Key = (ssh_config.host, ssh_config.port, ssh_config.user, remote_host, remote_port)
    with _LOCK:
        existing = _FORWARDS.get(key)
        if existing is not None:
            existing.cfg = ssh_config  # the pool follows the latest settings too
            return existing.address
        probe = open_channel(ssh_config, (remote_host, remote_port), ("127.0.0.1", 0))
        probe.close()
        made = _FORWARDS[key] = Forward(ssh_config, (remote_host, remote_port))
        log.debug(
            "port forward listening",
            extra={"op": "ssh.forward", "local_port": made.address[1], "remote_port": remote_port},
        )
        return made.address


def close_all() -> None:
    """Close every listener (tests, process exit); open forwarded connections end with it."""
    with _LOCK:
        for made in _FORWARDS.values():
            made.close()
        _FORWARDS.clear()
