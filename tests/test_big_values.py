"""Values far larger than expected, on every path: a frame or SFTP packet length from a corrupt
or hostile peer (the launcher's request to the warm CLI process, the helper's frames, the VM's
sftp-server), a huge script, input, config or manifest file, a command too long for the sshd, a
host name no resolver takes, names at NAME_MAX or past SQLite's path limit, huge errors and
inputs in the journal, CLIXML errors held back. What is too big is refused in one line with its
exit code, or cut where it is shown: never a MemoryError, a hang or gigabytes allocated."""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_sshd import SshServer

from win_automation import unixsock
from win_automation.adapters import persist, persist_wire

# In a process whose address space is capped 512 MiB above what it uses: a receiver that
# allocates the length a peer claims (recv(n) allocates n bytes first) dies of MemoryError.
_CLAIMED = """
import resource, socket, sys
{setup}
a, b = socket.socketpair()
b.sendall({header!r} + b"x" * 10)
b.shutdown(socket.SHUT_WR)
a.settimeout(5)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (512 << 20), resource.RLIM_INFINITY))
try:
    {receive}
except BaseException as exc:
    print(type(exc).__name__)
else:
    print("accepted")
"""

_RECEIVERS = {
    "unixsock": ("from win_automation import unixsock", "unixsock.recv_frame(a)", b"R"),
    "helper": ("from win_automation.adapters import persist_wire", "persist_wire.recv_frame_fds(a)", b"R"),
    "served": ("from win_automation.cli import served", "served._read_request(a)", b""),
}


@pytest.mark.parametrize("receiver", sorted(_RECEIVERS))
def test_a_frame_length_over_the_limit_is_refused_before_anything_is_allocated(receiver: str) -> None:
    setup, receive, kind = _RECEIVERS[receiver]
    header = kind + (0xFFFFFFF0).to_bytes(4, "big")
    script = _CLAIMED.format(setup=setup, header=header, receive=receive)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "FrameTooLarge", done.stdout + done.stderr


def test_a_frame_at_the_limit_is_taken_and_one_over_it_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(unixsock.frame(b"O", b"y" * 3))
        assert unixsock.recv_frame(a) == (b"O", b"yyy")
        assert unixsock.frame_size(unixsock.MAX_FRAME.to_bytes(4, "big")) == unixsock.MAX_FRAME
        with pytest.raises(unixsock.FrameTooLarge):
            unixsock.frame_size((unixsock.MAX_FRAME + 1).to_bytes(4, "big"))


def test_the_helper_hangs_up_on_a_huge_frame_at_once_and_serves_on(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A local peer that claims a 4 GiB request: the helper drops it at once (it neither waits
    for the bytes nor holds them) and the next request is served by the same helper."""
    cfg = live_sshd.config(known_hosts, connect_timeout=30)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 60)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert conn.exec("true", timeout=20).exit_status == 0  # starts the helper
        before = (persist_wire.read_info(conn.sock) or {})["pid"]
        with unixsock.sun_path(conn.sock) as where:
            peer.connect(where)
        peer.settimeout(60)
        started = time.monotonic()
        peer.sendall(b"R" + (0xFFFFFFFF).to_bytes(4, "big") + b"{" * 1000)
        try:
            got = peer.recv(1)
        except ConnectionResetError:  # hung up with the rest unread
            got = b""
        assert got == b""  # hung up on
        assert time.monotonic() - started < 10  # not after connect_timeout (30 s) of waiting
        other = conn.exec("echo other", timeout=20)
        assert (other.stdout, other.exit_status) == (b"other\n", 0)
        assert (persist_wire.read_info(conn.sock) or {})["pid"] == before  # not replaced
    finally:
        peer.close()
        persist_wire.stop_helpers(tmp_path / "data")


def test_a_request_over_the_frame_limit_is_refused_in_the_caller(
    live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A library caller's command too large for a frame: a one-line UsageError before anything is
    sent (not three helpers replaced as if they were dead)."""
    from win_automation.errors import UsageError

    cfg = live_sshd.config(known_hosts)
    conn = persist.WarmConnection(cfg, tmp_path / "data", 60)
    try:
        with pytest.raises(UsageError, match=r"^the exec request is \d+ MiB, over the 256 MiB"):
            conn.exec("x" * (unixsock.MAX_FRAME + 1), timeout=20)
        assert not conn.sock.exists()  # no helper was even started for it
    finally:
        persist_wire.stop_helpers(tmp_path / "data")


def _capped_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process whose address space is capped at 2 GiB: reading a 3 GiB file whole
    would be a MemoryError (without the cap, gigabytes of RAM)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "win_automation", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
    )


@pytest.mark.parametrize("what", ["script", "input-file", "config"])
def test_a_huge_script_input_or_config_file_is_refused_in_one_line(
    what: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A 3 GiB (sparse) script, job input or config file: exit 2 at once, one line naming the
    file and the limit, no job recorded; nothing near its size read."""
    big = tmp_path / "big.txt"
    with big.open("wb") as handle:
        handle.truncate(3 << 30)
    args = {
        "script": ["ssh", "script", str(big)],
        "input-file": ["run", "ping", "--input-file", str(big)],
        "config": ["--config", str(big), "ssh", "run", "--", "hi"],
    }[what]
    started = time.monotonic()
    done = _capped_cli(cli_env, tmp_path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(big) in lines[0], done.stderr
    assert "over the 32 MiB" in lines[0] and "3072 MiB" in lines[0]
    assert time.monotonic() - started < 30
    listed = subprocess.run(
        [sys.executable, "-m", "win_automation", "jobs", "list", "--json"],
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout + listed.stderr


def test_a_script_at_the_limit_runs_through_the_helper_and_one_byte_more_is_refused(
    cli, cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The largest script taken (32 MiB) fits every frame of the warm path and runs."""
    from win_automation.operations.powershell import MAX_SCRIPT_BYTES

    env = live_sshd.env(known_hosts)
    script = tmp_path / "limit.ps1"
    head = b"exit 7\n"
    script.write_bytes(head + b"#" * (MAX_SCRIPT_BYTES - len(head) - 1) + b"\n")
    done = cli("ssh", "script", str(script), env=env, timeout=120)
    assert done.code == 7, done.stderr[-2000:]
    with script.open("ab") as handle:
        handle.write(b"#")
    done = cli("ssh", "script", str(script), env=env)
    assert done.code == 2 and "over the 32 MiB a script may be" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "host", ["a" * 64, "a." * 200, "vm..example", "h" * 120_000], ids=["label", "name", "empty", "huge"]
)
@pytest.mark.parametrize(
    "command", [["ssh", "run", "--", "hi"], ["ssh", "get", "C:/x", "x"], ["ssh", "trust", "--yes"]]
)
def test_a_host_name_no_resolver_takes_is_a_config_error_in_one_short_line(
    cli, host: str, command: list[str]
) -> None:  # type: ignore[no-untyped-def]
    """A label over 63 characters (the resolver's IDNA step raised: a traceback from `ssh get`
    and `ssh trust`, `UnicodeError` and exit 1 from a job), a name over 253, an empty label:
    exit 2 before any connection, naming ssh.host, the value cut short."""
    done = cli(*command, env={"WIN_AUTOMATION_SSH_HOST": host})
    assert done.code == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ssh.host (from WIN_AUTOMATION_SSH_HOST) must be")
    assert len(lines[0]) < 300


@pytest.mark.parametrize("name", ["n" * 255, "\u00fc" * 127], ids=["ascii", "utf8"])
def test_a_file_named_at_name_max_is_copied_both_ways(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path, tmp_path: Path, name: str
) -> None:  # type: ignore[no-untyped-def]
    """A target whose name is 254-255 bytes: its part file (`.<name>.wa-part-<tag>`, beside it)
    would be over NAME_MAX ('File name too long' from `ssh get`, 'Bad message' from `ssh put`);
    the part file carries a cut name, and none is left behind."""
    env = live_sshd.env(known_hosts)
    (tmp_path / "up").mkdir()
    (tmp_path / "down").mkdir()
    source = tmp_path / "up" / name
    source.write_bytes(b"payload\n")
    done = cli("ssh", "put", str(source), f"{remote_dir}/{name}", env=env)
    assert done.code == 0, done.stderr
    assert (remote_dir / name).read_bytes() == b"payload\n"
    target = tmp_path / "down" / name
    done = cli("ssh", "get", f"{remote_dir}/{name}", str(target), env=env)
    assert done.code == 0, done.stderr
    assert target.read_bytes() == b"payload\n"
    assert sorted(p.name for p in remote_dir.iterdir()) == [name]
    assert sorted(p.name for p in target.parent.iterdir()) == [name]


def test_the_stale_part_file_of_a_long_name_is_found_and_removed(tmp_path: Path) -> None:
    from win_automation.operations import transfers
    from win_automation.partfiles import HOST_TAG

    target = tmp_path / ("s" * 250)
    stem = transfers._local_stem(target)
    assert len(f".{stem}{transfers.PART}{HOST_TAG}-4194304-0123abcd".encode()) <= 255
    stale = tmp_path / f".{stem}{transfers.PART}{HOST_TAG}-999999999-0123abcd"  # a pid no process has
    stale.write_bytes(b"x")
    assert transfers.remove_stale_local_parts(target) == [stale]
    assert not stale.exists()


@pytest.mark.parametrize("name", ["a" * 255, "\u00e9" * 127, "sub/" + "b" * 255])
def test_an_artifact_named_at_name_max_is_written_and_verified(tmp_path: Path, name: str) -> None:
    """A step's artifact (e.g. a Playwright script's `job.save(name, ...)`) named at the limit:
    its `.tmp-<name>.<tag>` file would be over NAME_MAX (exit 74, 'File name too long')."""
    from win_automation.artifacts.store import ArtifactWriter, read_manifest
    from win_automation.jobs.ids import new_job_id, new_trace_id

    writer = ArtifactWriter(tmp_path, new_job_id(), new_trace_id(), types=("playwright",))
    entry = writer.write_bytes("playwright", name, b"shot")
    assert entry.path == name and (writer.folder / name).read_bytes() == b"shot"
    assert [e.path for e in read_manifest(writer.folder).artifacts] == [name]
    left = [p.name for p in writer.folder.rglob("*") if p.name.startswith(".tmp-")]
    assert left == []


@pytest.mark.parametrize("field", ["command", "check"])
def test_a_cmd_command_too_long_for_the_sshd_from_a_workflow_input_is_exit_2(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path, field: str
) -> None:  # type: ignore[no-untyped-def]
    """`run ssh-exec` (no CLI check in front of it) with a cmd command or check over 255 KiB on a
    posix sshd: refused as bad input, not sent (sshd reset the connection: exit 3, as if the
    network had failed)."""
    long = "echo hi #" + "x" * 300_000
    data = (
        {"command": long, "shell": "cmd"}
        if field == "command"
        else {"command": "echo hi", "shell": "cmd", "check": long}
    )
    (tmp_path / "input.json").write_text(json.dumps(data))
    done = cli(
        "run", "ssh-exec", "--input-file", str(tmp_path / "input.json"), env=live_sshd.env(known_hosts)
    )
    assert done.code == 2, done.stderr
    assert "the cmd command is 292 KiB, over the 255 KiB" in done.stderr.strip().splitlines()[-1]


def test_a_huge_playwright_script_is_refused_without_being_read(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`playwright run SCRIPT` checked the size only after reading the whole file: a 3 GiB one
    was a MemoryError under a memory limit (gigabytes of RAM without one)."""
    big = tmp_path / "big.py"
    with big.open("wb") as handle:
        handle.truncate(3 << 30)
    done = _capped_cli(cli_env, tmp_path, "playwright", "run", str(big))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [f"error: SCRIPT {big}: {3 << 30} bytes, at most 262144"]


def test_an_sftp_packet_length_over_the_limit_is_refused_before_it_is_buffered() -> None:
    """A corrupt or hostile SFTP server that announces a 4 GiB packet and streams bytes: the
    download stops at once with ConnectError (exit 3); it buffered them up to the length, GiBs
    (a MemoryError under a memory limit)."""
    script = _CLAIMED.format(
        setup="import threading\nfrom win_automation.adapters import sftp_download",
        header=(0xFFFFFFF0).to_bytes(4, "big"),
        receive="\n    ".join(
            [
                "flood = lambda: [b.sendall(b'x' * (1 << 20)) for _ in range(4096)]",
                "threading.Thread(target=flood, daemon=True).start()",
                "sftp_download._SftpStream(a).packet()",
            ]
        ),
    ).replace("b.shutdown(socket.SHUT_WR)\n", "")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ConnectError", done.stdout + done.stderr[-2000:]


_PEAK = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, done.returncode, done.stderr[-500:])
"""


def _peak_mib(args: list[str], env: dict[str, str], cwd: Path) -> int:
    """The peak RSS (MiB) of `win-automation ARGS`, which must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "win_automation", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    peak, code, _ = done.stdout.split(" ", 2)
    assert int(code) == 0, done.stdout
    return int(peak)


def test_jobs_list_does_not_load_the_jobs_inputs(cli_env: dict[str, str], tmp_path: Path) -> None:
    """20 jobs whose input (a script) is 16 MiB each: `jobs list` held them all (the peak RSS
    grew by their size, 320 MiB here; 50 jobs of 32 MiB scripts were GiBs). Its memory stays
    near a Python process's start."""
    from win_automation.jobs.journal import Journal

    with Journal.open(tmp_path / "data") as journal:
        for _ in range(20):
            journal.create_job("ssh-exec", '{"command": "' + "x" * (16 << 20) + '"}', steps=["check", "exec"])
    for args in (["jobs", "list"], ["jobs", "list", "--json"]):
        peak = _peak_mib(args, cli_env, tmp_path)
        assert peak < 200, f"{args}: peak RSS {peak} MiB"


@pytest.mark.parametrize("warm", [False, True], ids=["helper", "warm-powershell"])
def test_powershell_errors_held_back_as_clixml_are_printed_after_the_run(
    cli, live_sshd: SshServer, known_hosts: Path, warm: bool
) -> None:  # type: ignore[no-untyped-def]
    """CLIXML on stderr is held back from the live output (it is decoded at the end): the CLI
    printed nothing of it, so `ssh run -- Write-Error boom` exited 1 without a word. Its text is
    printed once the command ended; a flood of it only its last 64 K characters, with a note."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_SSH_WARM_POWERSHELL": str(warm).lower()}
    done = cli("ssh", "run", "--", "Write-Error 'boom'", env=env)
    assert (done.code, done.stderr) == (1, "boom\n")
    flood = '& cmd.exe /d /s /c \'printf "#< CLIXML" >&2; head -c 50000000 /dev/zero | tr "\\0" x >&2\''
    done = cli("ssh", "run", "--", flood, env=env)
    assert done.code == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines[0] == "x" * 65536 and lines[1].startswith("note: stderr shows its last 65536 characters")
    assert len(lines) == 2


def test_a_data_dir_too_long_for_sqlite_says_so(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A data.dir whose journal path is over the 503 bytes SQLite opens: the error said the
    folder 'must be a writable folder', which it is; it says the path is too long."""
    data = tmp_path / ("a" * 200) / ("b" * 200)
    data = data / ("c" * (520 - len(str(data / "journal.sqlite3")) - 1))
    data.mkdir(parents=True)
    assert len(str(data / "journal.sqlite3")) == 520
    done = cli("jobs", "list", env={"WIN_AUTOMATION_DATA_DIR": str(data)})
    assert done.code == 74, done.stderr
    assert done.stderr == (
        f"error: the journal {data / 'journal.sqlite3'} cannot be used: its path is 520 bytes, over the"
        " 503 SQLite opens (point data.dir, WIN_AUTOMATION_DATA_DIR, at a shorter path)\n"
    )


def test_an_error_quoting_a_huge_value_keeps_its_start_and_end(
    cli, live_sshd: SshServer, known_hosts: Path
) -> None:  # type: ignore[no-untyped-def]
    """A 120 KB argument quoted in an error was a 120 KB error line; the line keeps its first and
    last 2048 characters (the reason is at the end), saying how much was left out."""
    huge = "z" * 120_000
    env = live_sshd.env(known_hosts)
    for args, code in ((["jobs", "show", huge], 2), (["ssh", "get", f"/nonexistent/{huge}", "out"], 1)):
        done = cli(*args, env=env)
        assert done.code == code, done.stderr[-300:]
        *warnings, line = done.stderr.splitlines()  # a connect retry's warning on a loaded machine
        assert all(len(w) < 300 for w in warnings), [w[:200] for w in warnings]
        assert line.startswith("error: ") and len(line) < 4300, line[:200]
        assert "characters left out)..." in line
    assert re.search(r"z{100}: [A-Za-z][\w ]+$", line), line[-100:]  # the server's reason, kept


@pytest.mark.parametrize("command", ["verify", "list"])
def test_a_huge_local_manifest_is_refused_without_being_read(
    cli_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    """A job folder whose manifest.json is 3 GiB (corrupt, or replaced): it was read whole before
    being parsed (a MemoryError traceback under a memory limit, GiBs of RAM without one)."""
    from win_automation.jobs.ids import new_job_id

    job_id = new_job_id()
    folder = tmp_path / "artifacts" / job_id
    folder.mkdir(parents=True)
    with (folder / "manifest.json").open("wb") as handle:
        handle.truncate(3 << 30)
    done = _capped_cli(cli_env, tmp_path, "artifacts", command, "--job", job_id)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr == f"error: {folder / 'manifest.json'} is over 16 MiB: not a manifest\n"


def test_jobs_tables_show_a_huge_error_cut(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    """A job that failed with a 120 KB error (a 120 KB ssh.user quoted in it): `jobs list` and
    `jobs show` printed it whole in their table (a thousand lines at a terminal); the cell keeps
    its start and end. `--json` keeps it whole."""
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_SSH_USER": "u" * 120_000}
    done = cli("ssh", "run", "--shell", "cmd", "--", "echo hi", env=env)
    assert done.code == 4, done.stderr[-300:]
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert len(job["error"]) > 120_000
    for args in (["jobs", "list"], ["jobs", "show", job["job_id"]]):
        shown = cli(*args)
        assert shown.code == 0 and "uuuuuuuu" in shown.stdout, shown.stderr
        assert len(shown.stdout) < 30_000, (args, len(shown.stdout))


def test_an_idempotency_check_that_prints_more_than_memory_is_not_held_whole(
    cli_env: dict[str, str], live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:
    """A check (run without artifact files) kept its whole output: 1 GB of it was a 2.9 GiB peak,
    a few GB an OOM kill. Each stream keeps its last 64 MiB; the command then runs as usual."""
    check = "head -c 400000000 /dev/zero | tr '\\0' x; exit 1"
    env = {**cli_env, **live_sshd.env(known_hosts)}
    args = ["ssh", "run", "--shell", "cmd", "--idempotent", "--idempotent-check", check, "--", "echo ran"]
    peak = _peak_mib(args, env, tmp_path)
    assert peak < 600, f"peak RSS {peak} MiB for a check that printed 400 MB"
