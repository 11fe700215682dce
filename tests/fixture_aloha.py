"""Fixtures for the Aloha tests: the stand-ins (tests/aloha_standin.py) next to the test sshd.

`aloha` gives an `AlohaWorld`: a stand-in server and client on loopback, the environment that
points the CLI (or a worker) at them and at the sshd (whose desktop probe answers `unlocked`
unless the test sets it), and `config()` for in-process runs. Import the fixture in a test module
(`from fixture_aloha import aloha  # noqa: F401`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aloha_standin import AlohaClient, AlohaServer
from fixture_sshd import SshServer

from win_automation.adapters import aloha as aloha_adapter
from win_automation.adapters import ssh, tunnel
from win_automation.config import Config, load_config


@dataclass
class AlohaWorld:
    server: AlohaServer
    client: AlohaClient
    sshd: SshServer
    env: dict[str, str]

    def config(self, **aloha: Any) -> Config:
        env = dict(self.env)
        for key, value in aloha.items():
            env[f"WIN_AUTOMATION_ALOHA_{key.upper()}"] = str(value)
        return load_config(None, env).config

    def aloha_env(self, **aloha: Any) -> dict[str, str]:
        return {f"WIN_AUTOMATION_ALOHA_{key.upper()}": str(value) for key, value in aloha.items()}


def aloha_env(server: AlohaServer, client: AlohaClient) -> dict[str, str]:
    return {
        "WIN_AUTOMATION_ALOHA_SERVER_URL": server.url + "/",
        "WIN_AUTOMATION_ALOHA_CLIENT_URL": client.url,
        "WIN_AUTOMATION_ALOHA_REQUEST_TIMEOUT": "2s",
        "WIN_AUTOMATION_ALOHA_POLL_INTERVAL": "50ms",
        "WIN_AUTOMATION_ALOHA_STOP_TIMEOUT": "5s",
    }


@pytest.fixture
def aloha(
    live_sshd: SshServer, known_hosts: Path, cli_env: dict[str, str], desktop: Any
) -> Iterator[AlohaWorld]:
    server, client = AlohaServer(stop_after=3), AlohaClient(step_seconds=0.1)
    env = {**cli_env, **live_sshd.env(known_hosts), **aloha_env(server, client)}
    yield AlohaWorld(server, client, live_sshd, env)
    client.stop()
    server.stop()
    aloha_adapter.close_all()
    tunnel.close_all()
    ssh.close_all()
