"""Where this process reaches a service of the VM (Aloha, the Playwright server): one switch.

    host, port = service_address(config, "127.0.0.1", 7887)
    url = service_url(config, "http://127.0.0.1:7887/generate_action")

By default (`ssh.forward_services = false`) the address is used as configured: the VM's ports as
forwarded to the host (QEMU's hostfwd). With `ssh.forward_services = true` the port is the
service's port on the VM itself, reached through a local port forward over the existing SSH
connection to the VM's own loopback (adapters.tunnel), so a VM that exposes only SSH works; the
host part of the configured address is then not used.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from win_automation.adapters import tunnel
from win_automation.config import Config


def service_address(config: Config, host: str, port: int) -> tuple[str, int]:
    """(host, port) unchanged, or the local end of the SSH forward to the VM's 127.0.0.1:port."""
    if not config.ssh.forward_services:
        return host, port
    return tunnel.forward(config.ssh, port)


def service_url(config: Config, url: str) -> str:
    """`url` with its host and port replaced by `service_address` (the path and query kept)."""
    parts = urlsplit(url)
    assert parts.hostname is not None  # config URLs are validated to have one
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host, local_port = service_address(config, parts.hostname, port)
    if (host, local_port) == (parts.hostname, port):
        return url
    return urlunsplit((parts.scheme, f"{host}:{local_port}", parts.path, parts.query, parts.fragment))
