"""The known-hosts file: fingerprints, verification outcomes, and `record` (what `ssh trust` writes)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import paramiko
import pytest

from win_automation.adapters import hostkeys
from win_automation.errors import HostKeyError


def new_key(tmp_path: Path, name: str) -> paramiko.PKey:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.PKey.from_path(path)


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = new_key(tmp_path, "k")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True
    )
    assert hostkeys.fingerprint(key) == out.stdout.split()[1]
    raw = hashlib.sha256(key.asbytes()).digest()
    assert hostkeys.fingerprint(key) == "SHA256:" + base64.b64encode(raw).decode().rstrip("=")


def test_record_verify_replace(tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    first, second = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    where = {"host": "10.0.0.5", "port": 22555, "known_hosts": known}
    with pytest.raises(HostKeyError, match=r"unknown host key for \[10\.0\.0\.5\]:22555"):
        hostkeys.verify(first, pinned=None, **where)
    assert hostkeys.record(first, **where) is True
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert known.read_text().startswith("[10.0.0.5]:22555 ssh-ed25519 ")
    assert hostkeys.record(first, **where) is False  # already there
    assert hostkeys.verify(first, pinned=None, **where).fingerprint == hostkeys.fingerprint(first)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        hostkeys.verify(second, pinned=None, **where)
    with pytest.raises(HostKeyError, match="pass --replace"):
        hostkeys.record(second, **where)
    assert hostkeys.record(second, replace=True, **where) is True
    assert hostkeys.verify(second, pinned=None, **where)
    assert len(known.read_text().splitlines()) == 1
    # other hosts in the file are kept when one is replaced
    hostkeys.record(first, host="other", port=22, known_hosts=known)
    hostkeys.record(first, replace=True, **where)
    assert hostkeys.verify(first, host="other", port=22, known_hosts=known, pinned=None)


def test_pinned_fingerprint_wins_over_the_file(tmp_path: Path) -> None:
    key, other = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    where = {"host": "h", "port": 22, "known_hosts": tmp_path / "none"}
    assert hostkeys.verify(key, pinned=hostkeys.fingerprint(key), **where)
    with pytest.raises(HostKeyError, match="HOST KEY MISMATCH"):
        hostkeys.verify(key, pinned=hostkeys.fingerprint(other), **where)
