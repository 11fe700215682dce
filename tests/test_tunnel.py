"""Port forwards over the pooled SSH connection (adapters/tunnel.py, operations/endpoints.py),
against the real test sshd: its loopback is the "VM's own loopback" here."""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixture_sshd import SshServer, free_port

from win_automation.adapters import ssh, tunnel
from win_automation.config import Config
from win_automation.errors import ConnectError
from win_automation.operations.endpoints import service_address, service_url


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    tunnel.close_all()
    ssh.close_all()
    yield
    tunnel.close_all()
    ssh.close_all()


class _Echo(socketserver.BaseRequestHandler):
    """Reads until the client half-closes, then sends it all back after `echo:`."""

    def handle(self) -> None:
        data = bytearray()
        while chunk := self.request.recv(65536):
            data += chunk
        self.request.sendall(b"echo:" + bytes(data))


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _roundtrip(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)


def test_bytes_cross_both_ways_with_half_close_and_the_listener_is_reused(ssh_config, echo_server) -> None:  # type: ignore[no-untyped-def]
    address = tunnel.forward(ssh_config, echo_server)
    assert address[0] == "127.0.0.1" and address[1] != echo_server
    assert tunnel.forward(ssh_config, echo_server) == address  # one listener per (VM, port)
    payload = bytes(range(256)) * 8192  # 2 MiB: several windows' worth of channel data
    assert _roundtrip(address, payload) == b"echo:" + payload
    # several connections at once, each on its own channel of the one SSH connection
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(_roundtrip(address, f"n{i}".encode())))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == sorted(f"echo:n{i}".encode() for i in range(8))
    assert len(ssh._POOL) == 1


def test_nothing_listening_on_the_vm_port_is_a_connect_error(ssh_config) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    with pytest.raises(ConnectError, match=rf"refused to forward to its 127\.0\.0\.1:{port}"):
        tunnel.forward(ssh_config, port)
    assert not tunnel._FORWARDS  # no listener kept for a refused forward


def test_the_vm_unreachable_is_a_connect_error(live_sshd: SshServer, known_hosts: Path) -> None:
    cfg = live_sshd.config(known_hosts, port=free_port(), connect_timeout=1)
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        tunnel.forward(cfg, 7887)


def test_a_service_that_stops_closes_forwarded_connections_with_no_bytes(ssh_config) -> None:  # type: ignore[no-untyped-def]
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = tunnel.forward(ssh_config, server.server_address[1])
    assert _roundtrip(address, b"up") == b"echo:up"
    server.shutdown()
    server.server_close()
    with socket.create_connection(address, timeout=10) as sock:
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""  # accepted, then closed: what a dropped service looks like


def test_a_dropped_ssh_connection_is_reconnected_for_the_next_forwarded_connection(
    live_sshd: SshServer, ssh_config, echo_server: int
) -> None:  # type: ignore[no-untyped-def]
    address = tunnel.forward(ssh_config, echo_server)
    assert _roundtrip(address, b"one") == b"echo:one"
    assert live_sshd.drop_sessions() >= 1
    assert _roundtrip(address, b"two") == b"echo:two"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_service_address_is_unchanged_by_default_and_the_tunnel_when_forwarding(ssh_config) -> None:  # type: ignore[no-untyped-def]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        direct = Config(ssh=ssh_config)
        assert service_address(direct, "10.0.0.5", port) == ("10.0.0.5", port)
        assert service_url(direct, f"http://10.0.0.5:{port}/x") == f"http://10.0.0.5:{port}/x"
        assert not tunnel._FORWARDS
        forwarded = Config(ssh=ssh_config.model_copy(update={"forward_services": True}))
        host, local = service_address(forwarded, "vm.example", port)
        assert (host, local) == tunnel.forward(forwarded.ssh, port) and local != port
        url = service_url(forwarded, f"http://vm.example:{port}/generate_action?q=1")
        assert url == f"http://127.0.0.1:{local}/generate_action?q=1"
        with httpx.Client() as client:  # a real HTTP exchange through the forward
            response = client.get(url)
        assert (response.status_code, response.text) == (200, "hello from /generate_action?q=1")
    finally:
        server.shutdown()
        server.server_close()
