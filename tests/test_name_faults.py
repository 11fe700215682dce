"""Names holding a newline or bytes that are not UTF-8 (argv hands those to Python as surrogate
escapes), as remote and local transfer paths, script file names and artifact names: each either
round-trips or is refused in one line naming the argument, never a traceback. Real CLI
processes against the real sshd (a posix VM, whose file names are bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixture_sshd import SshServer
from test_ssh_get_warm import COLD, warm_up

from win_automation.artifacts.store import safe_relative
from win_automation.errors import UsageError

NOT_UTF8 = "x\udcffy"  # the name b"x\xffy", as Python reads it from argv or the file system
NEWLINE = "a\nb"


def one_line(res, code: int) -> str:  # type: ignore[no-untyped-def]
    assert res.code == code, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    return str(res.stderr)


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_a_remote_path_that_is_not_utf8_is_refused_in_one_line(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    env = live_sshd.env(known_hosts)
    if mode == "warm":
        warm_up(cli, env, remote_dir, tmp_path)
    else:
        env = {**env, **COLD}
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "src.txt"
    src.write_text("src")
    remote = str(remote_dir / NOT_UTF8)
    shown = remote.replace("\udcff", "\\udcff")
    for args in (("ssh", "get", remote, str(out / "got")), ("ssh", "put", str(src), remote)):
        stderr = one_line(cli(*args, env=env), 2)
        assert stderr == f"error: REMOTE {shown}: not valid UTF-8, which SFTP paths must be\n"
    assert list(out.iterdir()) == [] and not [p for p in os.listdir(remote_dir) if p != "warm-up.txt"]


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_names_with_a_newline_or_other_bytes_round_trip(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, mode: str
) -> None:  # type: ignore[no-untyped-def]
    """A remote name with a newline (sha256sum escapes it in its output), a remote folder that
    holds a name that is not UTF-8 (paramiko cannot decode its listing), local names of both."""
    env = live_sshd.env(known_hosts)
    if mode == "warm":
        warm_up(cli, env, remote_dir, tmp_path)
    else:
        env = {**env, **COLD}
    Path(str(remote_dir / NOT_UTF8)).write_text("another's file")
    (remote_dir / NEWLINE).write_text("newline")
    out = tmp_path / "out"
    out.mkdir()
    for local in (out / NEWLINE, out / NOT_UTF8):
        got = cli("ssh", "get", "--json", str(remote_dir / NEWLINE), str(local), env=env)
        assert got.code == 0, got.stderr
        assert json.loads(got.stdout)["local"] == str(local) and local.read_text() == "newline"
        put = cli("ssh", "put", "--json", str(local), str(remote_dir / f"up-{NEWLINE}"), env=env)
        assert put.code == 0, put.stderr
        assert json.loads(put.stdout)["remote"] == str(remote_dir / f"up-{NEWLINE}")
        assert (remote_dir / f"up-{NEWLINE}").read_text() == "newline"
    assert sorted(os.listdir(out)) == sorted([NEWLINE, NOT_UTF8])
    left = sorted(p for p in os.listdir(remote_dir) if p != "warm-up.txt")
    assert left == sorted([NEWLINE, NOT_UTF8, f"up-{NEWLINE}"])  # no part file left


def test_a_script_whose_name_is_not_utf8_runs_and_is_recorded(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts), **COLD}
    script = tmp_path / f"{NOT_UTF8}.ps1"
    script.write_text("Write-Output 'from the script'\n")
    ran = cli("ssh", "script", "--json", str(script), env=env)
    assert ran.code == 0, ran.stderr
    assert "from the script" in json.loads(ran.stdout)["stdout"]
    listed = cli("jobs", "list", "--json", env=env)
    assert listed.code == 0 and json.loads(listed.stdout)[0]["state"] == "succeeded"


def test_an_artifact_name_that_is_not_utf8_is_refused() -> None:
    """The manifest is JSON (UTF-8): such a name could not be written into it."""
    with pytest.raises(UsageError, match="plain relative path"):
        safe_relative(NOT_UTF8)
    assert safe_relative(NEWLINE) == NEWLINE  # JSON holds it escaped: the manifest stays parseable
