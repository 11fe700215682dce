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


def corrupt_files(tmp_path: Path, good: str) -> dict[str, tuple[bytes, str]]:
    """Corrupt known-hosts contents (each after a good line) and what the error must say."""
    blob = good.split()[2]
    return {
        "binary": (b"\x00\xff\xfe\x80\x01garbage\n", "line 2 is not text"),
        "not base64": (b"h ssh-ed25519 !!!notbase64\n", "line 2: the key is not valid base64"),
        "two fields": (b"h ssh-ed25519\n", "line 2 is not"),
        "truncated": (f"h ssh-ed25519 {blob[:-8]}\n".encode(), "line 2: the ssh-ed25519 key is truncated"),
        "cut short": (f"h ssh-ed25519 {blob[:20]}\n".encode(), "line 2: the ssh-ed25519 key is truncated"),
        "huge": (b"h ssh-ed25519 " + b"A" * (8 << 20) + b"\n", "line 2 is longer than"),
    }


def test_a_corrupt_file_is_a_host_key_error_naming_the_line(tmp_path: Path) -> None:
    key = new_key(tmp_path, "a")
    good = f"[h]:2 {key.get_name()} {key.get_base64()}\n"
    known = tmp_path / "known_hosts"
    for case, (data, said) in corrupt_files(tmp_path, good).items():
        known.write_bytes(good.encode() + data)
        for call in (
            lambda: hostkeys.verify(key, host="h", port=2, known_hosts=known, pinned=None),
            lambda: hostkeys.known_types(known, "h", 2),
            lambda: hostkeys.record(key, host="other", port=22, known_hosts=known),
        ):
            with pytest.raises(HostKeyError) as caught:
                call()
            assert str(known) in str(caught.value) and said in str(caught.value), case
            assert len(str(caught.value)) < 400, case  # a line, not the file's bytes
        assert known.read_bytes() == good.encode() + data, case  # never rewritten


def test_record_keeps_every_other_line_as_it_was(tmp_path: Path) -> None:
    key, other = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    known = tmp_path / "known_hosts"
    kept = (
        "# my comment\n"
        "\n"
        f"other,10.0.0.9 {other.get_name()} {other.get_base64()} a comment\n"
        f"@cert-authority *.example {other.get_name()} {other.get_base64()}\n"
        "unknown ssh-future-type AAAAB3NzaC1yc2E=\n"
    )
    known.write_text(kept + f"[h]:2 {other.get_name()} {other.get_base64()}\n")
    assert hostkeys.record(key, host="h", port=2, known_hosts=known, replace=True) is True
    assert known.read_text() == kept + f"[h]:2 {key.get_name()} {key.get_base64()}\n"
    assert hostkeys.verify(key, host="h", port=2, known_hosts=known, pinned=None)
    assert hostkeys.verify(other, host="10.0.0.9", port=22, known_hosts=known, pinned=None)


def test_record_replaces_a_hashed_entry_and_keeps_the_line_s_other_names(tmp_path: Path) -> None:
    key, old = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    known = tmp_path / "known_hosts"
    hashed = paramiko.HostKeys.hash_host("[h]:2")
    known.write_text(f"{hashed},keep {old.get_name()} {old.get_base64()}\n")
    assert hostkeys.record(key, host="h", port=2, known_hosts=known, replace=True) is True
    assert known.read_text().splitlines() == [
        f"keep {old.get_name()} {old.get_base64()}",
        f"[h]:2 {key.get_name()} {key.get_base64()}",
    ]


def test_a_revoked_key_is_refused_even_when_recorded(tmp_path: Path) -> None:
    key = new_key(tmp_path, "a")
    known = tmp_path / "known_hosts"
    line = f"{key.get_name()} {key.get_base64()}\n"
    known.write_text(f"[h]:2,x {line}@revoked [h]:* {line}")
    with pytest.raises(HostKeyError, match=r"REVOKED host key for \[h\]:2: .* line 2 marks @revoked"):
        hostkeys.verify(key, host="h", port=2, known_hosts=known, pinned=None)
    assert hostkeys.verify(key, host="x", port=22, known_hosts=known, pinned=None)


def test_record_keeps_a_revoked_line_for_the_host(tmp_path: Path) -> None:
    """`ssh trust` used to rewrite an `@revoked` line naming the host as a plain entry of its key."""
    key, revoked = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    known = tmp_path / "known_hosts"
    line = f"@revoked [h]:2,x {revoked.get_name()} {revoked.get_base64()}\n"
    known.write_text(line)
    assert hostkeys.record(key, host="h", port=2, known_hosts=known) is True
    assert known.read_text() == line + f"[h]:2 {key.get_name()} {key.get_base64()}\n"
    with pytest.raises(HostKeyError, match="REVOKED"):
        hostkeys.verify(revoked, host="h", port=2, known_hosts=known, pinned=None)


def test_a_bom_and_crlf_line_breaks_are_read_and_kept(tmp_path: Path) -> None:
    key, other = new_key(tmp_path, "a"), new_key(tmp_path, "b")
    known = tmp_path / "known_hosts"
    first = f"[h]:2 {key.get_name()} {key.get_base64()}\r\n"
    known.write_bytes(b"\xef\xbb\xbf" + first.encode() + b"# note\r\n")
    assert hostkeys.verify(key, host="h", port=2, known_hosts=known, pinned=None)
    assert hostkeys.record(other, host="o", port=22, known_hosts=known) is True
    assert (
        known.read_bytes() == (first + "# note\r\n" + f"o {other.get_name()} {other.get_base64()}\n").encode()
    )
