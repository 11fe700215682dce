"""Host-key verification against the project's known-hosts file or a pinned fingerprint.

There is no AutoAddPolicy: an unknown key is refused with its type and SHA256 fingerprint and the
command that trusts it; a changed key is refused loudly; `record` (used by `ssh trust`) is the
only writer of the known-hosts file.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import paramiko

from win_automation.errors import ConfigError, HostKeyError
from win_automation.regularfiles import not_regular

TRUST_COMMAND = "win-automation ssh trust"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def host_entry(host: str, port: int) -> str:
    """The known-hosts name of host:port (`[host]:port` unless the port is 22)."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class PresentedKey:
    host: str
    port: int
    key_type: str
    fingerprint: str

    def describe(self) -> str:
        return f"{self.key_type} key {self.fingerprint}"

    @property
    def entry(self) -> str:
        """The known-hosts name (`[host]:port`)."""
        return host_entry(self.host, self.port)


def _load(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if not path.exists():
        return keys
    if (what := not_regular(path)) is not None:  # a FIFO would block the load, /dev/zero never ends
        raise ConfigError(f"ssh.known_hosts: {path} is not a regular file ({what})")
    try:
        keys.load(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HostKeyError(f"cannot read known-hosts file {path}: {exc}") from exc
    return keys


def known_types(path: Path, host: str, port: int) -> list[str]:
    """The key types recorded for host:port (to ask the server for one of them first)."""
    entry = _load(path).lookup(host_entry(host, port))
    return list(entry.keys()) if entry is not None else []


def verify(
    key: paramiko.PKey, *, host: str, port: int, known_hosts: Path, pinned: str | None
) -> PresentedKey:
    """Accept `key` when it matches the pinned fingerprint or the known-hosts entry; else refuse."""
    presented = PresentedKey(host, port, key.get_name(), fingerprint(key))
    name = host_entry(host, port)
    if pinned is not None:
        if presented.fingerprint == pinned:
            return presented
        raise HostKeyError(
            f"HOST KEY MISMATCH for {name}: the server presented {presented.describe()}, but "
            f"ssh.host_key_fingerprint pins {pinned}. Someone may be intercepting the connection; "
            "refusing to connect"
        )
    recorded = _load(known_hosts).lookup(name)
    if recorded is None or not recorded.keys():
        raise HostKeyError(
            f"unknown host key for {name}: {presented.describe()}. If that is the VM's key, "
            f"trust it with `{TRUST_COMMAND}` (records it in {known_hosts})"
        )
    same_type = recorded.get(presented.key_type)
    if same_type is not None and same_type == key:
        return presented
    held = ", ".join(f"{t} {fingerprint(k)}" for t, k in recorded.items())
    raise HostKeyError(
        f"HOST KEY CHANGED for {name}: the server presented {presented.describe()}, but "
        f"{known_hosts} holds {held}. Someone may be intercepting the connection, or the VM was "
        f"reinstalled; refusing to connect (after checking, `{TRUST_COMMAND} --replace`)"
    )


def record(key: paramiko.PKey, *, host: str, port: int, known_hosts: Path, replace: bool = False) -> bool:
    """Write `key` for host:port into the known-hosts file; False when it was already there.

    A different key already recorded for the host is kept (HostKeyError) unless `replace`.
    """
    name = host_entry(host, port)
    keys = _load(known_hosts)
    recorded = keys.lookup(name)
    if recorded is not None and recorded.get(key.get_name()) == key:
        return False
    if recorded is not None and recorded.keys() and not replace:
        raise HostKeyError(
            f"{known_hosts} already holds a different key for {name}; "
            f"pass --replace to replace it with {key.get_name()} {fingerprint(key)}"
        )
    if recorded is not None:
        for entry in keys._entries:  # drop every line naming this host (HostKeys has no remove)
            if name in entry.hostnames:
                entry.hostnames = [h for h in entry.hostnames if h != name]
        keys._entries = [e for e in keys._entries if e.hostnames]
    keys.add(name, key.get_name(), key)
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = known_hosts.with_name(known_hosts.name + ".tmp")
    keys.save(str(tmp))
    os.chmod(tmp, 0o600)
    os.replace(tmp, known_hosts)
    return True
