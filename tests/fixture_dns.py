"""A name server that never answers, as the processes of a mount namespace see it.

`silent_dns` (fixture): a UDP socket on a loopback address of its own that takes queries and
answers none, and `in_namespace(command)`, the argv that runs the shell `command` in a new mount
namespace (`unshare -m`) whose /etc/resolv.conf names only that server: every name lookup there
waits for the resolver's own timeouts (glibc: 5 s per server, twice)."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SilentDns:
    resolv_conf: Path

    def in_namespace(self, command: str) -> list[str]:
        return ["unshare", "-m", "sh", "-c", f"mount --bind {self.resolv_conf} /etc/resolv.conf && {command}"]


@pytest.fixture
def silent_dns(tmp_path: Path) -> Iterator[SilentDns]:
    address = f"127.83.{os.getpid() % 250 + 1}.{random.randint(1, 250)}"
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {address}\n")
    try:
        yield SilentDns(conf)
    finally:
        server.close()
