"""Name lookups and connections bounded by the caller's timeout.

`getaddrinfo` waits for the resolver's own timeouts (glibc: 5 s per name server, twice) whatever
the socket's timeout is: a name server that does not answer held a probe, or each SSH connect
attempt, 10 s. Here the lookup runs on a thread that is left to end by itself when it takes
longer than the caller's timeout. An address literal is not looked up.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

Address = tuple[int, Any]  # (family, sockaddr)
_INET = (socket.AF_INET, socket.AF_INET6)


class NameNotResolved(OSError):
    """The name did not resolve (its text says how); an OSError, as getaddrinfo's own failures."""


def _literal(host: str, port: int) -> list[Address] | None:
    for family in _INET:
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    return None


def lookup(host: str, port: int, timeout: float) -> list[Address]:
    """The addresses of host:port for a TCP connection, found within `timeout` seconds."""
    literal = _literal(host, port)
    if literal is not None:
        return literal
    found: list[list[Any] | OSError] = []

    def run() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=run, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if not found:
        raise NameNotResolved(
            f"the name {host!r} did not resolve within {timeout:g}s (no answer from the DNS server)"
        )
    infos = found[0]
    if isinstance(infos, OSError):
        raise NameNotResolved(f"the name {host!r} does not resolve ({infos.strerror or infos})")
    addresses = [(family, address) for family, _, _, _, address in infos if family in _INET]
    if not addresses:
        raise NameNotResolved(f"the name {host!r} has no IPv4 or IPv6 address")
    return addresses


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port, the lookup and the connection within `timeout` seconds in
    all (each address tried in turn, as socket.create_connection does). Raises NameNotResolved,
    TimeoutError or the last address's OSError."""
    deadline = time.monotonic() + timeout
    error: OSError | None = None
    for family, address in lookup(host, port, timeout):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or TimeoutError(f"no answer to the connection within {timeout:g}s")
