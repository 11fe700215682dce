"""The SSH key file, its certificate and the known-hosts file when they are not what they should
be: too big, unreadable, a symlink loop, a DSA key, a broken certificate, a known-hosts file of
millions of comment lines or with a UTF-8 BOM, and `ssh trust` with something planted where a
fixed-name temporary file used to be. Each is refused at once in one line naming the setting and
the file (or works), with the exit code of its kind. Real CLI processes and the real sshd."""

from __future__ import annotations

import json
import os
import stat
import time
import tracemalloc
from pathlib import Path

import pytest
import unprivileged
from fixture_sshd import SshServer
from test_file_faults import QUICK, fifo, one_line
from test_ssh_get_warm import COLD

from win_automation.adapters import hostkeys

HI = ("ssh", "run", "--shell", "cmd", "--", "echo", "hi")


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def own_key(live_sshd: SshServer, tmp_path: Path) -> Path:
    """A copy of the client key the server accepts, 0600, in a folder of the test's."""
    key = tmp_path / "keys" / "id"
    key.parent.mkdir(exist_ok=True)
    key.write_bytes(live_sshd.client_key.read_bytes())
    key.chmod(0o600)
    return key


def failed_step(res, code: int, ending: str) -> None:  # type: ignore[no-untyped-def]
    """`ssh run` runs as a job: one line, `error: step exec: ...ENDING`."""
    assert res.code == code, res.stderr
    assert res.stderr.startswith("error: step exec: ") and res.stderr.endswith(ending + "\n"), res.stderr
    assert res.stderr.count("\n") == 1, res.stderr


def doctor(cli, env: dict[str, str], check: str, run=None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    res = (run or cli)("doctor", "--check", check, "--json", env=env, timeout=QUICK)
    (item,) = [c for c in json.loads(res.stdout)["checks"] if c["name"] == check]
    assert res.code == 1 and item["status"] == "fail", res.stdout
    return item  # type: ignore[no-any-return]


# ---- the key file and its certificate ------------------------------------------------------------


@pytest.mark.parametrize("which", ["key", "cert"])
def test_a_huge_key_or_certificate_is_refused_at_once(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, which: str
) -> None:  # type: ignore[no-untyped-def]
    """paramiko reads both whole: a 2 GB key took 10 s and 2 GB of memory, a 1 GB certificate
    44 s and 9.5 GB, before a misleading 'wrong passphrase'. (64 MiB here: past the cap.)"""
    key = own_key(live_sshd, tmp_path)
    if which == "key":
        big, said = sparse(key, 64 << 20), f"ssh.key_file: {key}"
    else:
        big, said = (
            sparse(Path(f"{key}-cert.pub"), 64 << 20),
            f"ssh.key_file {key}: its certificate {key}-cert.pub",
        )
    env = {**live_sshd.env(known_hosts, key_file=str(key)), **COLD}
    started = time.monotonic()
    res = cli(*HI, env=env, timeout=QUICK)
    failed_step(res, 4, f"{said} is larger than 1 MiB (a key or certificate is a few KiB)")
    assert time.monotonic() - started < 10
    for check in ("ssh", "ssh_key"):  # `ssh` said "no answer within 5s ... the VM hangs"
        assert (
            doctor(cli, env, check)["cause"]
            == f"{said} is larger than 1 MiB (a key or certificate is a few KiB)"
        )
    assert big.stat().st_size == 64 << 20  # not touched


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_certificate_that_is_a_fifo_or_folder_is_refused_without_blocking(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    key = own_key(live_sshd, tmp_path)
    cert = Path(f"{key}-cert.pub")
    fifo(cert) if kind == "fifo" else cert.mkdir()
    env = {**live_sshd.env(known_hosts, key_file=str(key)), **COLD}
    what = "a FIFO" if kind == "fifo" else "a directory"
    res = cli(*HI, env=env, timeout=QUICK)
    failed_step(res, 2, f"ssh.key_file {key}: its certificate {cert} is not a regular file ({what})")


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"ssh-ed25519-cert-v01@openssh.com AAAA\n"])
def test_a_broken_certificate_beside_a_good_key_is_named(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, content: bytes
) -> None:  # type: ignore[no-untyped-def]
    """It was 'cannot load ssh.key_file KEY (wrong passphrase or not a private key)'."""
    key = own_key(live_sshd, tmp_path)
    cert = Path(f"{key}-cert.pub")
    cert.write_bytes(content)
    env = {**live_sshd.env(known_hosts, key_file=str(key)), **COLD}
    said = f"ssh.key_file {key}: its certificate {cert} is not an OpenSSH certificate of this key"
    said += "; fix or remove it"
    failed_step(cli(*HI, env=env, timeout=QUICK), 4, said)
    assert doctor(cli, env, "ssh_key")["cause"] == said
    cert.unlink()
    assert cli(*HI, env=env, timeout=QUICK).code == 0  # the same key without it logs in


def test_a_key_this_user_cannot_read_says_so(cli, cli_env, live_sshd: SshServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`chmod 000`: 'wrong passphrase or not a private key' from `ssh run`, ✓ from doctor."""
    home = unprivileged.shared_dir()
    known = live_sshd.write_known_hosts(home / "known_hosts")
    key = home / "id"
    key.write_bytes(live_sshd.client_key.read_bytes())
    key.chmod(0o000)
    env = {
        **cli_env,
        **live_sshd.env(known, key_file=str(key)),
        **COLD,
        "HOME": str(home),
        "WIN_AUTOMATION_DATA_DIR": str(home / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(home / "artifacts"),
    }
    said = f"ssh.key_file: {key} cannot be read: Permission denied"
    failed_step(unprivileged.run_cli(*HI, env=env, cwd=home, timeout=QUICK), 4, said)

    def run(*args: str, env: dict[str, str], timeout: float) -> object:
        return unprivileged.run_cli(*args, env=env, cwd=home, timeout=timeout)

    item = doctor(cli, env, "ssh_key", run)
    assert item["cause"] == said and item["detail"] == str(key)


def test_a_symlink_loop_as_key_file_says_so(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "a"
    key.symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(key)
    env = {**live_sshd.env(known_hosts, key_file=str(key)), **COLD}
    said = f"ssh.key_file: {key} cannot be read: Too many levels of symbolic links"
    failed_step(cli(*HI, env=env, timeout=QUICK), 4, said)


def test_a_dsa_key_is_refused_in_one_line(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """It exited 1 with `UnknownKeyType(type=<class '...DSAPrivateKey'>, bytes=<1369>)` after a
    two-line CryptographyDeprecationWarning; `doctor --check ssh` blamed 'no answer within 5s'."""
    import warnings

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa

    key = tmp_path / "dsa"
    with warnings.catch_warnings():  # made here, not by ssh-keygen (newer OpenSSH makes none)
        warnings.simplefilter("ignore")
        made = dsa.generate_private_key(key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    key.write_bytes(made)
    key.chmod(0o600)
    env = {**live_sshd.env(known_hosts, key_file=str(key)), **COLD}
    said = f"ssh.key_file {key}: DSA keys are not supported; use an ed25519 or RSA key"
    failed_step(cli(*HI, env=env, timeout=QUICK), 4, said)
    for check in ("ssh", "ssh_key"):
        assert doctor(cli, env, check)["cause"] == said


# ---- the known-hosts file ------------------------------------------------------------------------


def test_millions_of_comment_lines_cost_memory_in_proportion(
    cli, live_sshd: SshServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """5 million `#` lines (10 MB) took 16.5 s and 960 MB: an object per line. (1 million here.)"""
    known = tmp_path / "known_hosts"
    known.write_bytes(b"#\n" * 1_000_000 + live_sshd.host_key_line().encode())
    size = known.stat().st_size
    key = hostkeys.paramiko.PKey.from_path(live_sshd.host_key)
    tracemalloc.start()
    try:
        assert hostkeys.verify(key, host="127.0.0.1", port=live_sshd.port, known_hosts=known, pinned=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * size, peak
    assert cli(*HI, env={**live_sshd.env(known), **COLD}, timeout=QUICK).code == 0


def test_a_known_hosts_file_over_16_mib_is_refused(cli, live_sshd: SshServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    known = tmp_path / "known_hosts"
    known.write_bytes(b"#" * (16 << 20) + b"\n" + live_sshd.host_key_line().encode())
    env = {**live_sshd.env(known), **COLD}
    said = f"known-hosts file {known} is larger than 16 MiB: not a known-hosts file"
    said += "; fix or delete it (ssh.known_hosts)"
    failed_step(cli(*HI, env=env, timeout=QUICK), 5, said)
    one_line(cli("ssh", "trust", "--yes", env=env, timeout=QUICK), 5, said)


def test_a_bom_at_the_start_of_known_hosts_is_accepted(cli, live_sshd: SshServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Its first line was silently unmatched: 'unknown host key', exit 5."""
    known = tmp_path / "known_hosts"
    known.write_bytes("\ufeff".encode() + live_sshd.host_key_line().encode())
    env = {**live_sshd.env(known), **COLD}
    res = cli(*HI, env=env, timeout=QUICK)
    assert res.code == 0 and res.stdout == "hi\n", res.stderr
    trust = cli("ssh", "trust", "--yes", env=env, timeout=QUICK)
    assert trust.code == 0 and "already" in trust.stdout + trust.stderr, trust  # not recorded twice


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_trust_writes_a_temporary_file_of_its_own(
    cli, live_sshd: SshServer, tmp_path: Path, planted: str
) -> None:  # type: ignore[no-untyped-def]
    """It wrote a fixed-name `known_hosts.tmp` with O_TRUNC and no O_EXCL|O_NOFOLLOW: a FIFO
    there hung `ssh trust` for good; a symlink there had it overwrite the file the link named
    and leave known_hosts a symlink to it."""
    folder = tmp_path / "kh"
    folder.mkdir()
    known = folder / "known_hosts"
    tmp = folder / "known_hosts.tmp"
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    fifo(tmp) if planted == "fifo" else tmp.symlink_to(precious)
    env = {**live_sshd.env(known), **COLD}
    res = cli("ssh", "trust", "--yes", env=env, timeout=QUICK)
    assert res.code == 0, res.stderr
    assert stat.S_ISREG(os.lstat(known).st_mode) and known.read_text() == live_sshd.host_key_line()
    assert sorted(os.listdir(folder)) == ["known_hosts", "known_hosts.tmp"]  # no temporary file left
    if planted == "fifo":
        assert stat.S_ISFIFO(os.lstat(tmp).st_mode)
    else:
        assert os.readlink(tmp) == str(precious) and precious.read_text() == "precious\n"
    assert cli(*HI, env=env, timeout=QUICK).code == 0
