"""Names whose DNS server does not answer (tests/fixture_dns.py: the resolver of a mount
namespace asks a UDP socket that never answers). getaddrinfo waits the resolver's own timeouts,
10 s per name with glibc, whatever a socket's timeout says; each connection that looks a name up
now gets its own timeout for the lookup (win_automation.adapters.resolve)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fixture_dns import SilentDns
from fixture_sshd import SshServer


def run_in(
    silent_dns: SilentDns, command: str, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run(
        silent_dns.in_namespace(command), env=env, capture_output=True, text=True, timeout=120
    )
    return run, time.monotonic() - started


def test_a_host_name_whose_dns_server_does_not_answer_fails_within_the_connect_timeout(
    silent_dns: SilentDns, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path
) -> None:
    """ssh.host a name, the name server silent: each connect attempt waited the resolver's own
    10 s (3 attempts: 31 s) whatever ssh.connect_timeout said. The lookup now gets the timeout."""
    env = {
        **cli_env,
        **live_sshd.env(known_hosts, host="vm.stalled-dns.test", connect_timeout="1.5s", persist="0"),
        "WIN_AUTOMATION_CLI_SERVER": "0",
    }
    command = f"exec {sys.executable} -m win_automation ssh run --shell cmd -- echo hi"
    run, elapsed = run_in(silent_dns, command, env)
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: step exec: cannot connect to vm.stalled-dns.test:{live_sshd.port}: the name"
        " 'vm.stalled-dns.test' did not resolve within 1.5s (no answer from the DNS server)"
    )
    assert elapsed < 3 * 1.5 + 0.5 + 1.0 + 4.0, elapsed  # 3 attempts, their backoff, start-up


ALOHA = """
import time
from win_automation.adapters.aloha import AlohaService
from win_automation.errors import ConnectError
service = AlohaService("server", "http://aloha.stalled-dns.test:7887", timeout=1.0)
started = time.monotonic()
try:
    service.request("GET", "/health", record=lambda exchange: None)
except ConnectError as exc:
    print(exc)
print(round(time.monotonic() - started, 1))
"""


def test_an_aloha_url_whose_dns_server_does_not_answer_fails_within_the_request_timeout(
    silent_dns: SilentDns, cli_env: dict[str, str]
) -> None:
    """3 attempts (the connect policy) took 3 x 10 s: now 3 x the request timeout."""
    run, _ = run_in(silent_dns, f'exec {sys.executable} -c "$SCRIPT"', {**cli_env, "SCRIPT": ALOHA})
    assert run.returncode == 0, run.stderr
    error, took = run.stdout.strip().splitlines()
    assert error == (
        "cannot connect to the Aloha server at http://aloha.stalled-dns.test:7887: the name"
        " 'aloha.stalled-dns.test' did not resolve within 1s (no answer from the DNS server)"
    )
    assert float(took) < 3 * 1.0 + 0.5 + 1.0 + 1.0, took  # 3 attempts and their backoff
