"""CLI faults as users meet them: a corrupt known-hosts file, output that cannot be written,
a command too long for the remote side, a journal locked by another process."""

from __future__ import annotations

from pathlib import Path

from fixture_sshd import SshServer


def test_corrupt_known_hosts_is_exit_5_in_one_line_and_trust_keeps_the_file(
    cli, live_sshd: SshServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    known = tmp_path / "known_hosts"
    good = live_sshd.host_key_line().encode()
    other = b"other.example ssh-ed25519 " + good.split()[2] + b"\n"
    for bad in (b"\xff\xfe\x00garbage\n", b"h ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\n"):
        known.write_bytes(other + bad + good)
        env = live_sshd.env(known)
        out = cli("ssh", "run", "--shell", "cmd", "--", "echo", "hi", env=env)
        assert out.code == 5 and out.stdout == "", out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
        assert "known-hosts file" in out.stderr
        assert str(known) in out.stderr and "line 2" in out.stderr
        trust = cli("ssh", "trust", "--fingerprint", live_sshd.fingerprint(), "--replace", env=env)
        assert trust.code == 5 and "line 2" in trust.stderr and "Traceback" not in trust.stderr
        assert known.read_bytes() == other + bad + good
