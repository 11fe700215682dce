"""ssh.max_output: a command that prints without end (`yes`) is stopped when a stream passes the
cap, instead of filling the disk until its deadline (and then losing the evidence with exit 74).
Real CLI processes against the real sshd; the kept file is checked byte for byte."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fixture_sshd import LOGIN, SshServer

from win_automation.config import load_config
from win_automation.errors import ConfigError
from win_automation.sizes import format_size, parse_size

MIB = 1 << 20


def _running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-u", LOGIN, "-f", pattern], capture_output=True).returncode == 0


def _gone(pattern: str, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while _running(pattern) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _running(pattern)


@pytest.mark.parametrize(
    ("stream", "persist", "then_sleep"),
    [("stdout", "0", False), ("stdout", "0", True), ("stdout", "5m", True), ("stderr", "0", True)],
    ids=["yes-direct", "stdout-direct", "stdout-warm-helper", "stderr-direct"],
)
def test_a_stream_past_the_cap_stops_the_command_and_keeps_its_first_bytes(
    cli,
    live_sshd: SshServer,
    known_hosts: Path,
    tmp_path: Path,
    stream: str,
    persist: str,
    then_sleep: bool,
) -> None:  # type: ignore[no-untyped-def]
    word = f"wa-cap-{uuid.uuid4().hex[:12]}"  # this test's own `yes`, for pgrep
    # `yes` alone dies of SIGPIPE once the channel closes; a sleep after it would not: it shows
    # that the command's whole tree was killed, not only its channel closed
    sleep = f"sleep 40.{uuid.uuid4().int % 10**6:06d}"
    command = f"yes {word}"
    if then_sleep:
        command = f"({command} | head -c {3 * MIB}) {'>&2' if stream == 'stderr' else ''}; {sleep}"
    env = {**live_sshd.env(known_hosts, persist=persist), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "1MiB"}
    started = time.monotonic()
    res = cli("ssh", "run", "--shell", "cmd", "--", command, env=env, timeout=120)
    assert res.code == 1, res.stderr[-500:]
    assert time.monotonic() - started < 60  # stopped, not run to its deadline (5 min)
    assert _gone(word) and _gone(sleep), "the remote command still runs"

    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    error = (
        f"step exec: {stream} passed ssh.max_output (1 MiB): the command was stopped;"
        f" {stream}.txt holds its first 1 MiB"
    )
    assert (job["state"], job["exit_code"], job["error"]) == ("failed", 1, error), job
    folder = tmp_path / "artifacts" / job["job_id"]
    kept = (folder / f"{stream}.txt").read_bytes()
    line = f"{word}\n".encode()
    assert kept == (line * (MIB // len(line) + 1))[:MIB]  # exactly the first 1 MiB, nothing after
    # what was shown live is what was kept, then one error line that names the job
    said = f"error: {error} (job {job['job_id']})\n"
    assert res.stderr.endswith(said), res.stderr[-500:]
    # (on stderr the error line starts its own line: the 1 MiB cut one mid-line)
    shown = res.stdout if stream == "stdout" else res.stderr.removesuffix(said).removesuffix("\n")
    assert shown.encode() == kept, (len(shown), res.stderr[-300:])
    if stream == "stdout":
        assert res.stderr == said, res.stderr[-500:]
    entries = {a["path"]: a for a in json.loads((folder / "manifest.json").read_text())["artifacts"]}
    assert entries[f"{stream}.txt"]["size_bytes"] == MIB
    assert {"stdout.txt", "stderr.txt"} <= set(entries)
    verified = cli("artifacts", "verify", "--job", job["job_id"])
    assert verified.code == 0, verified.stderr


def test_a_powershell_command_past_the_cap_is_stopped_too(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The stand-in prints the script's body, then sleeps: 3 KB of it pass a 1 KiB cap."""
    body = f"# {'x' * 3000}\nStart-Sleep 40"
    env = {**live_sshd.env(known_hosts, persist="0"), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "1KiB"}
    started = time.monotonic()
    res = cli("ssh", "run", "--", body, env=env, timeout=120)
    assert res.code == 1 and time.monotonic() - started < 30, res.stderr
    assert _gone("powershell.exe -NoProfile"), "the stand-in still runs"
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert (job["state"], job["exit_code"]) == ("failed", 1), job
    assert res.stderr == (
        "error: step exec: stdout passed ssh.max_output (1 KiB): the command was stopped;"
        f" stdout.txt holds its first 1 KiB (job {job['job_id']})\n"
    )
    assert res.stdout == body[:1024]
    assert (tmp_path / "artifacts" / job["job_id"] / "stdout.txt").read_bytes() == body.encode()[:1024]
    assert cli("artifacts", "verify", "--job", job["job_id"]).code == 0


def test_a_capped_job_prints_its_json_object_and_names_itself_as_a_timed_out_one_does(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts, persist="0"), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "10"}
    res = cli("ssh", "run", "--json", "--shell", "cmd", "--", "echo 0123456789abcdef", env=env)
    assert res.code == 1, res.stderr
    data = json.loads(res.stdout)
    job_id = data.pop("job_id")
    assert data.pop("duration_ms") >= 0
    assert data == {
        "exit_code": 1,
        "stdout": "0123456789",  # what stdout.txt kept, not what the VM sent
        "stderr": "",
        "timed_out": False,
        "skipped": False,
        "output_capped": True,
    }
    error = (
        "step exec: stdout passed ssh.max_output (10 bytes): the command was stopped;"
        " stdout.txt holds its first 10 bytes"
    )
    assert res.stderr == f"error: {error} (job {job_id})\n"
    # the record stays honest: failed, with the cap's error, and the output the JSON showed
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert (shown["state"], shown["exit_code"], shown["error"]) == ("failed", 1, error), shown
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert (job["job_id"], job["state"], job["error"]) == (job_id, "failed", error)
    assert (tmp_path / "artifacts" / job_id / "stdout.txt").read_bytes() == b"0123456789"


def test_the_live_display_stops_at_the_cap_too(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts, persist="0"), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "10"}
    res = cli("ssh", "run", "--shell", "cmd", "--", "printf 0123456789abc; printf 0123456789xyz >&2", env=env)
    assert res.code == 1, res.stderr
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    folder = tmp_path / "artifacts" / job["job_id"]
    assert (folder / "stdout.txt").read_bytes() == b"0123456789"
    assert res.stdout == "0123456789"  # what the user sees is what was kept
    # stderr: at most its own first 10 bytes (the stop may come before it printed), then the error
    kept = (folder / "stderr.txt").read_text()
    assert "0123456789xyz".startswith(kept) and len(kept) <= 10, kept
    brk = "\n" if kept else ""  # the error line starts its own line after output cut mid-line
    assert res.stderr == f"{kept}{brk}error: {job['error']} (job {job['job_id']})\n", res.stderr


def test_a_runaway_idempotency_check_is_capped_too(
    cli, live_sshd: SshServer, known_hosts: Path, remote_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    word = f"wa-check-{uuid.uuid4().hex[:12]}"
    sleep = f"sleep 40.{uuid.uuid4().int % 10**6:06d}"
    flag = remote_dir / "ran"
    env = {**live_sshd.env(known_hosts, persist="0"), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "1MiB"}
    started = time.monotonic()
    res = cli(
        "ssh",
        "run",
        "--shell",
        "cmd",
        "--timeout",
        "5m",
        "--idempotent",
        "--idempotent-check",
        f"(yes {word} | head -c {3 * MIB}); {sleep}",
        "--",
        f"touch {flag}",
        env=env,
        timeout=120,
    )
    assert res.code == 1, res.stderr[-500:]
    assert time.monotonic() - started < 60  # stopped at the cap, not at its deadline (5 min)
    error = (
        "step check: the idempotency check's stdout passed ssh.max_output (1 MiB):"
        " the check was stopped (the command did not run)"
    )
    assert res.stderr == f"error: {error}\n" and res.stdout == "", res.stderr[-500:]
    assert _gone(word) and _gone(sleep), "the check still runs on the VM"
    assert not flag.exists()
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert (job["state"], job["exit_code"], job["error"]) == ("failed", 1, error), job


def test_output_of_exactly_the_cap_is_kept_whole_and_succeeds(
    cli, live_sshd: SshServer, known_hosts: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts, persist="0"), "WIN_AUTOMATION_SSH_MAX_OUTPUT": str(MIB)}
    command = f"head -c {MIB} /dev/zero | tr '\\0' o; head -c {MIB} /dev/zero | tr '\\0' e >&2"
    res = cli("ssh", "run", "--shell", "cmd", "--", command, env=env, timeout=120)
    assert res.code == 0, res.stderr[-500:]
    (job,) = json.loads(cli("jobs", "list", "--json").stdout)
    assert job["state"] == "succeeded", job
    folder = tmp_path / "artifacts" / job["job_id"]
    assert (folder / "stdout.txt").read_bytes() == b"o" * MIB
    assert (folder / "stderr.txt").read_bytes() == b"e" * MIB
    assert (folder / "exit_code.txt").read_text() == "0\n"
    assert cli("artifacts", "verify", "--job", job["job_id"]).code == 0


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1GiB", 1 << 30),
        ("512MiB", 512 * MIB),
        ("64kib", 64 << 10),
        ("10MB", 10_000_000),
        ("1.5KiB", 1536),
        (" 2 TiB ", 2 << 40),
        ("4096", 4096),
        ("7B", 7),
        ("0.5KiB", 512),
        ("1.25KB", 1250),
        ("2.0", 2),
        ("1." + "0" * 60 + "MiB", MIB),
    ],
)
def test_max_output_takes_a_size_from_the_environment_or_the_file(
    tmp_path: Path, value: str, size: int
) -> None:
    assert load_config(None, {"WIN_AUTOMATION_SSH_MAX_OUTPUT": value}).config.ssh.max_output == size
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ssh": {"max_output": value}}))
    assert load_config(path, {}).config.ssh.max_output == size


def test_max_output_defaults_to_1_gib_and_takes_json_numbers(tmp_path: Path) -> None:
    assert load_config(None, {}).config.ssh.max_output == 1 << 30
    path = tmp_path / "c.json"
    path.write_text('{"ssh": {"max_output": 1e9}}')
    assert load_config(path, {}).config.ssh.max_output == 10**9


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_output": -1}, "ssh.max_output must be more than zero bytes, got -1"),
        (
            {"max_output": "-5MiB"},
            "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes, got '-5MiB'",
        ),
        ({"max_output": 0}, "ssh.max_output must be more than zero bytes, got 0"),
        ({"max_output": "0GiB"}, "ssh.max_output must be more than zero bytes, got '0GiB'"),
        ({"max_output": "0.1B"}, "ssh.max_output must be a whole number of bytes, got '0.1B'"),
        (
            {"max_output": "lots"},
            "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes, got 'lots'",
        ),
        (
            {"max_output": "1 GX"},
            "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes (units: B,",
        ),
        ({"max_output": "1e9"}, "ssh.max_output must be a size such as 512MiB"),
        ({"max_output": 1.5}, "ssh.max_output must be a whole number of bytes, got 1.5"),
        ({"max_output": True}, "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes, got True"),
        ({"max_output": None}, "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes, got None"),
        ({"max_output": [1]}, "ssh.max_output must be a size such as 512MiB, 1GiB or plain bytes, got [1]"),
        ({"max_output": "2000TiB"}, "ssh.max_output must be at most 1024TiB, got '2000TiB'"),
        ({"max_output": "9" * 80}, "ssh.max_output must be at most 1024TiB, got '9999999999999999999...(82"),
    ],
)
def test_bad_max_output_values_in_the_file_are_one_line(tmp_path: Path, data: dict, message: str) -> None:  # type: ignore[type-arg]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ssh": data}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["1.5", "1.5B", "0.5", "1.0000000001KiB", "1." + "0" * 40 + "1KiB", "1.0001KB", "0.1"],
)
def test_a_size_that_is_not_whole_bytes_is_refused_alike_from_the_file_and_the_environment(
    tmp_path: Path, value: str
) -> None:
    """Never rounded (`1.5` was 1 byte from the environment and refused from the file)."""
    with pytest.raises(ConfigError) as from_env:
        load_config(None, {"WIN_AUTOMATION_SSH_MAX_OUTPUT": value})
    assert str(from_env.value) == (
        f"ssh.max_output (from WIN_AUTOMATION_SSH_MAX_OUTPUT) must be a whole number of bytes,"
        f" got {parse_shown(value)}"
    )
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ssh": {"max_output": value}}))
    with pytest.raises(ConfigError) as from_file:
        load_config(path, {})
    assert str(from_file.value).startswith(
        f"ssh.max_output must be a whole number of bytes, got {parse_shown(value)}"
    ), str(from_file.value)
    assert "\n" not in str(from_file.value)


def parse_shown(value: str) -> str:
    """`value` as an error shows it (cut when long)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


@pytest.mark.parametrize("value", ["-1", "0", "garbage", "1GX", "1,5GiB"])
def test_bad_max_output_from_the_environment_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^ssh\.max_output \(from WIN_AUTOMATION_SSH_MAX_OUTPUT\) must be"):
        load_config(None, {"WIN_AUTOMATION_SSH_MAX_OUTPUT": value})


def test_a_bad_max_output_is_exit_2_before_any_job(cli, live_sshd: SshServer, known_hosts: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**live_sshd.env(known_hosts), "WIN_AUTOMATION_SSH_MAX_OUTPUT": "-1"}
    res = cli("ssh", "run", "--shell", "cmd", "--", "echo hi", env=env)
    assert res.code == 2 and res.stdout == "", res
    assert res.stderr == (
        "error: ssh.max_output (from WIN_AUTOMATION_SSH_MAX_OUTPUT) must be a size such as 512MiB,"
        " 1GiB or plain bytes, got '-1'\n"
    ), res.stderr
    assert json.loads(cli("jobs", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (1 << 30, "1 GiB"),
        (MIB, "1 MiB"),
        (1536, "1536 bytes"),
        (3 << 40, "3 TiB"),
        (1, "1 byte"),
        (10**9, "1000000000 bytes"),
    ],
)
def test_format_size_spells_the_largest_exact_binary_unit(size: int, shown: str) -> None:
    assert format_size(size) == shown
    assert parse_size(shown.replace(" ", "").replace("bytes", "").replace("byte", "")) == size
