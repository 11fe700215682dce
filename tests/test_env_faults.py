"""Environment faults: a corrupt journal, an unwritable data.dir or --out folder, artifacts that
are folders or unreadable, huge or deeply nested arguments. Each is one line naming the file or
option and what to do, with its documented exit code, never a traceback. And every command finds
a job's artifacts from any working directory (the journal records the absolute folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import unprivileged

from win_automation.partfiles import HOST_TAG, owner_tag


def one_line(res, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert res.code == code, (res.code, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def job_id_of(res) -> str:  # type: ignore[no-untyped-def]
    return json.loads(res.stdout)["job_id"]


@pytest.mark.parametrize("damage", ["garbage", "zeroed-pages"])
def test_a_corrupt_journal_says_where_it_is_and_what_to_do(cli, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    ran = cli("run", "ping", "--json")
    assert ran.code == 0, ran.stderr
    journal = tmp_path / "data" / "journal.sqlite3"
    for extra in ("-wal", "-shm"):
        Path(f"{journal}{extra}").unlink(missing_ok=True)
    if damage == "garbage":
        journal.write_bytes(os.urandom(9000))
    else:
        with journal.open("r+b") as fh:
            fh.seek(0)
            fh.write(b"\0" * 200)
    for args in (["jobs", "list"], ["jobs", "show", job_id_of(ran)], ["run", "ping"], ["artifacts", "prune"]):
        res = cli(*args)
        one_line(res, 74, f"the journal {journal} is corrupt", "move it aside", "artifact folders are intact")
    # The artifacts are intact and still verify, found without the journal.
    assert cli("artifacts", "verify", "--job", job_id_of(ran)).code == 0
    journal.rename(journal.with_suffix(".corrupt"))
    assert cli("jobs", "list").code == 0  # a fresh journal


def test_data_dir_that_is_a_file_or_not_writable(cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    home = unprivileged.shared_dir()
    as_file = home / "file"
    as_file.write_text("")
    res = cli("run", "ping", env={"WIN_AUTOMATION_DATA_DIR": str(as_file)})
    one_line(res, 74, f"data.dir {as_file}: cannot create it (it is a file)", "WIN_AUTOMATION_DATA_DIR")
    locked = home / "locked"  # another user's folder: the unprivileged process cannot write in it
    locked.mkdir()
    unprivileged.not_mine(locked)
    env = {**cli_env, "HOME": str(home), "WIN_AUTOMATION_ARTIFACT_OUT": str(home / "artifacts")}
    for data_dir, needle in ((locked / "data", "cannot create it"), (locked, "cannot be used")):
        env["WIN_AUTOMATION_DATA_DIR"] = str(data_dir)
        for args in (["run", "ping"], ["jobs", "list"]):
            res = unprivileged.run_cli(*args, env=env, cwd=home)
            one_line(res, 74, str(data_dir), needle)


def test_a_journal_of_another_user_says_whose_it_is_and_still_lists(cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    """The journal made by another user (a `sudo` run) in a data dir of one's own: `jobs list`
    still reads it; a job command says whose the file is and how to give it back, exit 74."""
    home = unprivileged.shared_dir()
    data = home / "data"
    env = {**cli_env, "HOME": str(home), "WIN_AUTOMATION_DATA_DIR": str(data)}
    env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(home / "artifacts")
    assert cli("run", "ping", env=env).code == 0
    journal = unprivileged.not_mine(data / "journal.sqlite3")
    listed = unprivileged.run_cli("jobs", "list", "--json", env=env, cwd=home)
    assert listed.code == 0 and [j["workflow"] for j in json.loads(listed.stdout)] == ["ping"], listed.stderr
    res = unprivileged.run_cli("run", "ping", env=env, cwd=home)
    one_line(res, 74, f"{journal} is not writable by you (owned by uid {unprivileged.NOBODY})", "chown")


def test_a_read_only_journal_or_data_dir_of_ones_own_says_so_and_doctor_names_it(cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    """One's own journal made read-only (chmod 444): it was `not writable by you (owned by uid 0,
    root: made by a sudo run?); give it back (sudo chown 0 ...)`, and doctor saw nothing wrong."""
    home = unprivileged.shared_dir()
    data = home / "data"
    env = {**cli_env, "HOME": str(home), "WIN_AUTOMATION_DATA_DIR": str(data)}
    env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(home / "artifacts")
    assert cli("run", "ping", env=env).code == 0
    journal = data / "journal.sqlite3"
    journal.chmod(0o444)
    res = unprivileged.run_cli("run", "ping", env=env, cwd=home)
    one_line(res, 74, f"{journal} is read-only (mode r--r--r--); make it writable (chmod u+w {journal}*")
    assert "sudo" not in res.stderr
    doctor = unprivileged.run_cli("doctor", "--json", env=env, cwd=home)
    folders = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "folders")
    assert folders["status"] == "fail" and f"{journal} is read-only" in folders["cause"], folders
    listed = unprivileged.run_cli("jobs", "list", "--json", env=env, cwd=home)
    assert listed.code == 0 and len(json.loads(listed.stdout)) == 1, listed.stderr
    for leftover in data.glob("journal.sqlite3-*"):  # SQLite made them with the journal's mode
        leftover.unlink()
    journal.chmod(0o644)
    data.chmod(0o555)  # the folder, where SQLite makes the -wal and -shm files
    res = unprivileged.run_cli("run", "ping", env=env, cwd=home)
    one_line(res, 74, "the folder is not writable by you (mode r-xr-xr-x", f"data.dir {data} must be")


def test_an_unwritable_artifacts_out_dir_fails_the_job_with_74(cli_env) -> None:  # type: ignore[no-untyped-def]
    home = unprivileged.shared_dir()
    out = home / "out"  # the unprivileged process's own folder, mode 0555
    out.mkdir()
    out.chmod(0o555)
    env = {**cli_env, "HOME": str(home), "WIN_AUTOMATION_DATA_DIR": str(home / "data")}
    env["WIN_AUTOMATION_ARTIFACT_OUT"] = str(out)
    res = unprivileged.run_cli("run", "ping", "--json", env=env, cwd=home)
    one_line(res, 74, "step write-artifact: artifacts.out_dir: cannot write", f"{out}/", "Permission denied")
    outcome = json.loads(res.stdout)
    assert outcome["state"] == "failed" and outcome["artifacts_dir"] is None
    shown = unprivileged.run_cli("jobs", "show", outcome["job_id"], "--json", env=env, cwd=home)
    steps = {s["name"]: s["state"] for s in json.loads(shown.stdout)["steps"]}
    assert steps["write-artifact"] == "failed" and list(out.iterdir()) == []


def test_fetch_into_folders_that_cannot_be_written(cli_env) -> None:  # type: ignore[no-untyped-def]
    home = unprivileged.shared_dir()
    env = {
        **cli_env,
        "HOME": str(home),
        "WIN_AUTOMATION_DATA_DIR": str(home / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(home / "artifacts"),
    }
    ran = unprivileged.run_cli("run", "ping", "--json", env=env, cwd=home)
    assert ran.code == 0, ran.stderr
    job = job_id_of(ran)
    read_only = home / "ro"  # the unprivileged process's own folder, mode 0555
    read_only.mkdir()
    read_only.chmod(0o555)
    roots = home / "roots"  # another user's folder
    roots.mkdir()
    unprivileged.not_mine(roots)
    taken = home / "taken"
    taken.mkdir()
    (taken / job).write_text("a file where the job's folder would go")
    for out, needle in (
        (read_only, "Permission denied"),
        (roots, "Permission denied"),
        (taken, "it exists and is not a folder"),
    ):
        res = unprivileged.run_cli("artifacts", "fetch", "--job", job, "--out", str(out), env=env, cwd=home)
        one_line(res, 74, f"--out {out}: cannot write into {out / job}", needle)


def test_verify_names_artifacts_that_are_folders_or_unreadable(cli_env) -> None:  # type: ignore[no-untyped-def]
    home = unprivileged.shared_dir()
    env = {
        **cli_env,
        "HOME": str(home),
        "WIN_AUTOMATION_DATA_DIR": str(home / "data"),
        "WIN_AUTOMATION_ARTIFACT_OUT": str(home / "artifacts"),
    }
    ran = unprivileged.run_cli("run", "ping", "--json", env=env, cwd=home)
    job = job_id_of(ran)
    artifact = home / "artifacts" / job / "ping.json"
    artifact.chmod(0o000)
    res = unprivileged.run_cli("artifacts", "verify", "--job", job, env=env, cwd=home)
    one_line(res, 1, "ping.json (unreadable: Permission denied)")
    res = unprivileged.run_cli(
        "artifacts", "fetch", "--job", job, "--out", str(home / "o"), env=env, cwd=home
    )
    one_line(res, 1, "ping.json (unreadable: Permission denied)")
    artifact.unlink()
    artifact.mkdir()
    res = unprivileged.run_cli("artifacts", "verify", "--job", job, env=env, cwd=home)
    one_line(res, 1, "ping.json (a directory, not a file)")


def test_huge_and_deeply_nested_arguments(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("run", "ping").code == 0
    listed = cli("jobs", "list", "--limit", "99999999999999999999", "--json")
    assert listed.code == 0 and len(json.loads(listed.stdout)) == 1
    nested = tmp_path / "nested.json"
    nested.write_text('{"message": ' + "[" * 1100 + "]" * 1100 + "}")
    one_line(
        cli("run", "ping", "--input-file", str(nested)), 2, "--input-file", "nested more than 200 levels"
    )
    one_line(cli("run", "ping", "--input", nested.read_text()), 2, "--input: nested more than 200 levels")
    one_line(cli("run", "ping", "--input", '{"message": ' + "9" * 5000 + "}"), 2, "more than 4300 digits")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line(cli("run", "ping", "--input-file", str(fifo), timeout=10), 2, "is not a regular file")
    one_line(cli("run", "ping", "--input-file", str(tmp_path)), 2, "is a directory")


def test_artifacts_are_found_from_any_directory(cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    env = {**cli_env, "WIN_AUTOMATION_ARTIFACT_OUT": "rel-artifacts"}  # relative, as the default

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "win_automation", *args]
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)

    ran = run("run", "ping", "--json", cwd=here)
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)["job_id"]
    folder = here / "rel-artifacts" / job
    assert json.loads(ran.stdout)["artifacts_dir"] == str(folder)
    for args in (["artifacts", "verify", "--job", job], ["artifacts", "list", "--job", job, "--json"]):
        res = run(*args, cwd=elsewhere)
        assert res.returncode == 0, res.stderr
    shown = json.loads(run("jobs", "show", job, "--json", cwd=elsewhere).stdout)
    assert shown["artifacts_dir"] == str(folder) and shown["artifacts"]
    fetched = run("artifacts", "fetch", "--job", job, "--out", "copy", cwd=elsewhere)
    assert fetched.returncode == 0 and (elsewhere / "copy" / job / "ping.json").is_file()
    # No artifacts is its own message and exit code; a mismatch is another.
    (folder / "manifest.json").unlink()
    res = run("artifacts", "verify", "--job", job, cwd=elsewhere)
    assert res.returncode == 66 and f"no artifacts for job {job}: {folder} has no manifest.json" in res.stderr
    unknown = "20260101T000000000Z-0123456789ab"
    res = run("artifacts", "verify", "--job", unknown, cwd=elsewhere)
    assert res.returncode == 66 and "does not exist" in res.stderr
    assert not (elsewhere / "rel-artifacts").exists()  # nothing created to answer


def test_a_mismatch_is_exit_1_not_66(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = job_id_of(cli("run", "ping", "--json"))
    (tmp_path / "artifacts" / job / "ping.json").write_text("changed")
    res = cli("artifacts", "verify", "--job", job)
    one_line(res, 1, "do not match the manifest", "ping.json (size")


def test_prune_removes_stale_partial_files_only(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = job_id_of(cli("run", "ping", "--json"))
    folder = tmp_path / "artifacts" / job
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".tmp-stdout.txt.{HOST_TAG}-{dead.pid}-0123abcd"
    live = folder / f".tmp-stderr.txt.{owner_tag()}"  # this test process is alive
    old = folder / ".tmp-x.txt.00000000-1-0123abcd"  # another host's, two days old
    untagged = folder / ".tmp-old-format"
    for path in (stale, live, old, untagged):
        path.write_text("partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    dry = cli("artifacts", "prune", "--dry-run", "--json")
    assert (
        sorted(json.loads(dry.stdout)["partial_files"]) == sorted([str(stale), str(old)]) and stale.exists()
    )
    res = cli("artifacts", "prune")
    assert res.code == 0 and "removed 2 stale partial file(s)" in res.stdout
    assert not stale.exists() and not old.exists() and live.exists() and untagged.exists()
    assert cli("artifacts", "verify", "--job", job).code == 0
    assert re.fullmatch(r"[0-9a-f]{8}", HOST_TAG)
