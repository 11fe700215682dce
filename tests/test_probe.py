"""adapters/probe against real endpoints on loopback: each way a service can be there or not."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from fixture_endpoints import HttpEndpoint, RawListener, aloha_server_routes, closed_port
from fixture_sshd import SshServer

from win_automation.adapters.probe import probe_http, probe_tcp


def test_http_answers_with_status_and_body(endpoints: list) -> None:
    server = HttpEndpoint({**aloha_server_routes(), "/busy": (503, "overloaded")})
    endpoints.append(server)
    ok = probe_http(server.url + "/", 2)
    assert ok.kind == "ok" and ok.status == 200 and ok.body == "Aloha API server is running"
    busy = probe_http(server.url + "/busy", 2)
    assert (busy.kind, busy.status, busy.body, busy.ok) == ("http_status", 503, "overloaded", False)


def test_a_body_without_end_or_trickled_is_not_waited_for_nor_held(endpoints: list) -> None:
    """The status is the answer: the first 2 KiB of the body, or what came by the timeout."""
    for mode in ("endless", "trickle"):
        server = RawListener(mode)
        endpoints.append(server)
        started = time.monotonic()
        probe = probe_http(server.url + "/", 1.0)
        assert time.monotonic() - started < 2.5, mode
        assert (probe.kind, probe.status) == ("ok", 200), (mode, probe)
        assert probe.body == "x" * len(probe.body) and 0 < len(probe.body) <= 2048, mode


def test_refused_dns_closed_and_silent_are_told_apart(endpoints: list) -> None:
    closing, silent = RawListener("close"), RawListener("silent")
    endpoints += [closing, silent]
    assert probe_http(f"http://127.0.0.1:{closed_port()}/", 1).kind == "refused"
    assert probe_tcp("127.0.0.1", closed_port(), 1).kind == "refused"
    assert probe_http("http://no-such-host.invalid:7887/", 1).kind == "dns"
    assert probe_tcp("no-such-host.invalid", 22, 1).kind == "dns"
    closed = probe_http(closing.url + "/", 1)
    assert closed.kind == "closed" and "closed at once with no bytes" in closed.detail
    assert probe_tcp("127.0.0.1", closing.port, 1).kind == "closed"
    started = time.monotonic()
    hung = probe_http(silent.url + "/", 0.3)
    assert hung.kind == "silent" and 0.25 < time.monotonic() - started < 1.0
    assert probe_tcp("127.0.0.1", silent.port, 0.3).kind == "silent"


def test_wrong_service_and_tls(endpoints: list, live_sshd: SshServer) -> None:
    # a real sshd on an "HTTP" port: it sends its banner, refuses the request line and closes
    wrong = probe_http(f"http://127.0.0.1:{live_sshd.port}/", 2)
    assert wrong.kind == "wrong_service" and "SSH server" in wrong.detail
    assert probe_tcp("127.0.0.1", live_sshd.port, 2).kind == "ok"
    http = HttpEndpoint(aloha_server_routes())
    endpoints.append(http)
    assert probe_http(f"https://127.0.0.1:{http.port}/", 2).kind == "tls"
    as_ssh = probe_tcp("127.0.0.1", http.port, 0.5)  # HTTP servers never speak first
    assert as_ssh.kind == "silent"
    as_grpc = probe_tcp("127.0.0.1", http.port, 2, speak="http2")
    assert as_grpc.kind == "wrong_service" and "HTTP/1" in as_grpc.detail


def test_http2_probe_reaches_a_real_grpc_server() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe = probe_tcp("127.0.0.1", port, 2, speak="http2")
        assert probe.kind == "ok", probe
    finally:
        server.stop(0)
