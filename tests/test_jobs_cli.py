"""`run`, `jobs list|show|cancel|resume` as users meet them: real CLI processes, one journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_jobs import JournalLock, wait_for

from win_automation.jobs.journal import Journal
from win_automation.jobs.state import JobState

BAD_IDS = ["../x", "/etc/passwd", ""]


def start_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "win_automation", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def step_running(data: Path, step: str) -> str | None:
    """The job id once `step` of the newest job is running."""
    if not (data / "journal.sqlite3").exists():
        return None
    with Journal.open(data, recover=False) as journal:
        jobs = journal.list_jobs(limit=1)
        if jobs and any(
            s.name == step and s.state == JobState.RUNNING for s in journal.steps(jobs[0].job_id)
        ):
            return jobs[0].job_id
    return None


def killed_mid_step(env: dict[str, str], cwd: Path, hold_seconds: float) -> str:
    """The id of a `ping` job whose process was killed (SIGKILL) in its second step."""
    data = cwd / "data"
    proc = start_cli(env, cwd, "run", "ping", "--input", json.dumps({"hold_seconds": hold_seconds}))
    wait_for(lambda: step_running(data, "check-journal"), what="check-journal to run")
    job_id = step_running(data, "check-journal")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert job_id is not None
    return job_id


def test_run_list_show(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("run", "ping", "--input", '{"message": "hi"}', "--json")
    assert res.code == 0, res.stderr
    outcome = json.loads(res.stdout)
    job_id = outcome["job_id"]
    assert outcome["state"] == "succeeded" and outcome["outputs"]["write-artifact"]["message"] == "hi"
    assert outcome["artifacts_dir"].endswith(job_id)
    listed = json.loads(cli("jobs", "list", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    assert (listed[0]["state"], listed[0]["steps_done"], listed[0]["steps_total"]) == ("succeeded", 3, 3)
    assert json.loads(cli("jobs", "list", "--state", "failed", "--json").stdout) == []
    assert json.loads(cli("jobs", "list", "--type", "other", "--json").stdout) == []
    assert len(json.loads(cli("jobs", "list", "--since", "1h", "--json").stdout)) == 1
    assert json.loads(cli("jobs", "list", "--since", "2099-01-01", "--json").stdout) == []
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert [s["name"] for s in shown["steps"]] == ["check-engine", "check-journal", "write-artifact"]
    assert all(s["attempts"] == 1 and s["duration_ms"] is not None for s in shown["steps"])
    assert shown["artifacts"][0]["path"] == "ping.json" and shown["engine"] == "local"
    assert [e["state"] for e in shown["events"]][:2] == ["queued", "running"]
    table = cli("jobs", "show", job_id)
    assert table.code == 0 and "write-artifact" in table.stdout and "ping.json" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "ping", "--input", '{"hold_seconds": -2}'], "--input.hold_seconds: Input should be greater"),
        (["run", "ping", "--input", "[1]"], "--input: must be a JSON object, got list"),
        (["run", "ping", "--input", "{"], "--input: invalid JSON at line 1 column 2"),
        (["run", "nope"], "WORKFLOW: no workflow named 'nope'"),
        (
            ["run", "ping", "--metrics", "--metrics-interval", "soon"],
            "--metrics-interval: must be a duration",
        ),
        (["jobs", "list", "--state", "done"], "--state: 'done' is not a state"),
        (["jobs", "list", "--since", "yesterday"], "--since: 'yesterday' is neither a duration"),
        (["jobs", "cancel", "20261122T015916123Z-3f9a1c0b7e2d", "--wait", "x"], "--wait: must be a duration"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_records_nothing(cli, tmp_path: Path, args, message) -> None:  # type: ignore[no-untyped-def]
    res = cli(*args)
    assert res.code == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {res.stderr.strip()[7:]}"] and message in res.stderr
    assert "Traceback" not in res.stderr
    if (tmp_path / "data" / "journal.sqlite3").exists():
        with Journal.open(tmp_path / "data") as journal:
            assert journal.list_jobs() == []


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "show"],
        ["jobs", "cancel"],
        ["jobs", "resume"],
        ["artifacts", "list", "--job"],
        ["artifacts", "verify", "--job"],
        ["artifacts", "fetch", "--out", "OUT", "--job"],
    ],
)
def test_path_traversal_job_ids_are_refused_before_any_file_is_touched(
    cli, tmp_path: Path, command, bad
) -> None:  # type: ignore[no-untyped-def]
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    res = cli(*args, bad)
    assert res.code == 2 and "is not a job id" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "artifacts").exists()


def test_missing_job_is_exit_1(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("jobs", "show", "20261122T015916123Z-3f9a1c0b7e2d")
    assert res.code == 1 and "job 20261122T015916123Z-3f9a1c0b7e2d not found" in res.stderr


def test_kill_9_then_list_shows_interrupted_and_resume_finishes(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job_id = killed_mid_step(cli_env, tmp_path, hold_seconds=1.5)
    listed = json.loads(cli("jobs", "list", "--state", "interrupted", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    before = json.loads(cli("jobs", "show", job_id, "--json").stdout)["steps"]
    assert [s["state"] for s in before] == ["succeeded", "interrupted", "queued"]
    res = cli("jobs", "resume", job_id, "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "succeeded"
    after = json.loads(cli("jobs", "show", job_id, "--json").stdout)["steps"]
    assert after[0] == before[0]  # the finished step was not run again
    assert [s["state"] for s in after] == ["succeeded"] * 3
    again = cli("jobs", "resume", job_id)
    assert again.code == 2 and "only failed or interrupted jobs resume" in again.stderr


def test_a_locked_journal_with_a_dead_owners_job_is_read_after_a_second(cli, cli_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Marking a dead owner's job interrupted needs the write lock. Held by another process (one
    stopped mid-transaction), `jobs list` and `jobs show` waited a writer's 10 s busy timeout
    before reading the journal as it is: they wait one second, and say so in one note."""
    job_id = killed_mid_step(cli_env, tmp_path, hold_seconds=30)
    with JournalLock(tmp_path / "data" / "journal.sqlite3"):
        for args in (("jobs", "list", "--json"), ("jobs", "show", job_id, "--json")):
            started = time.monotonic()
            res = cli(*args)
            assert time.monotonic() - started < 6, args  # was over 10 s
            assert res.code == 0, res.stderr
            assert res.stderr.count("\n") == 1 and res.stderr.startswith("note: read-only, as it is: ")
            assert "locked by another process (still database is locked after 1 s)" in res.stderr
            shown = json.loads(res.stdout)
            assert (shown[0] if isinstance(shown, list) else shown)["state"] == "running"  # as it is
    listed = json.loads(cli("jobs", "list", "--json").stdout)
    assert [(j["job_id"], j["state"]) for j in listed] == [(job_id, "interrupted")]


def test_a_failed_job_resumes_from_its_failed_step(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "artifacts").write_text("a file where the artifact root should be")
    res = cli("run", "ping", "--json")
    assert res.code == 74, res.stderr  # not retried: the file stays in the way until removed
    failed = json.loads(res.stdout)
    assert failed["state"] == "failed" and "step write-artifact" in failed["error"]
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: job {failed['job_id']} failed: step write-artifact")
    )
    shown = json.loads(cli("jobs", "show", failed["job_id"], "--json").stdout)
    assert [(s["state"], s["attempts"]) for s in shown["steps"]] == [
        ("succeeded", 1),
        ("succeeded", 1),
        ("failed", 1),
    ]
    (tmp_path / "artifacts").unlink()
    res = cli("jobs", "resume", failed["job_id"], "--json")
    assert res.code == 0, res.stderr
    resumed = json.loads(cli("jobs", "show", failed["job_id"], "--json").stdout)
    assert resumed["steps"][:2] == shown["steps"][:2] and resumed["state"] == "succeeded"
    assert (resumed["steps"][2]["state"], resumed["steps"][2]["attempts"]) == ("succeeded", 1)


def test_cancel_from_another_process(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    proc = start_cli(cli_env, tmp_path, "run", "ping", "--input", '{"hold_seconds": 60}')
    wait_for(lambda: step_running(data, "check-journal"), what="check-journal to run")
    job_id = step_running(data, "check-journal")
    started = time.monotonic()
    res = cli("jobs", "cancel", job_id)
    assert res.code == 0 and res.stdout.strip() == f"job {job_id} cancelled", res.stderr
    assert time.monotonic() - started < 10
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and f"error: job {job_id} cancelled" in err
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "cancelled" and [s["state"] for s in shown["steps"]][1:] == ["cancelled"] * 2
    again = cli("jobs", "cancel", job_id)
    assert again.code == 1 and "already cancelled" in again.stderr


def test_a_cancel_its_stopped_owner_never_took_outlives_the_owner(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`jobs cancel` of a job whose owner is stopped says it takes effect when the owner goes on;
    the owner was killed instead: the job was recorded `interrupted`, and `jobs resume` ran it to
    success despite the cancel that had been acknowledged."""
    data = tmp_path / "data"
    proc = start_cli(cli_env, tmp_path, "run", "ping", "--input", '{"hold_seconds": 60}')
    wait_for(lambda: step_running(data, "check-journal"), what="check-journal to run")
    job_id = step_running(data, "check-journal")
    proc.send_signal(signal.SIGSTOP)
    try:
        res = cli("jobs", "cancel", job_id, "--wait", "1s")
        assert res.code == 0 and "the cancel takes effect when it continues" in res.stdout, res.stdout
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "cancelled", shown
    assert "its owner process died before it stopped" in shown["error"]
    resumed = cli("jobs", "resume", job_id)
    assert resumed.code != 0 and "cancelled" in resumed.stderr, resumed


def test_metrics_lines_go_to_the_metrics_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "metrics.log"
    res = cli(
        "run",
        "ping",
        "--input",
        '{"hold_seconds": 0.35}',
        "--metrics",
        "--metrics-interval",
        "100ms",
        env={"WIN_AUTOMATION_METRICS_PATH": str(path)},
    )
    assert res.code == 0, res.stderr
    lines = path.read_text().splitlines()
    # one line per counter a round (the 4 job counters, then those the workflows declare), one ts
    # each; a round starts with jobs_enqueued_total (two rounds may share a millisecond: the last
    # loop's and the one written on stop)
    rounds = sum(line.startswith("metric=jobs_enqueued_total ") for line in lines)
    per_round = len(lines) // rounds
    assert rounds >= 2 and per_round >= 4 and len(lines) == per_round * rounds
    for start in range(0, len(lines), per_round):
        assert len({line.rsplit(" ts=", 1)[1] for line in lines[start : start + per_round]}) == 1
    assert "metric=" not in res.stdout
    assert lines[-per_round].startswith("metric=jobs_enqueued_total value=1 ts=")
    assert lines[-per_round + 1].startswith("metric=jobs_completed_total value=1 ts=")
    on_stdout = cli("run", "ping", "--metrics")
    assert "metric=jobs_completed_total value=1 ts=" in on_stdout.stdout


def _stopped_owner_past_expiry(cli_env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """A `run ping` stopped (SIGSTOP) in its check-journal step, its heartbeat 1 h old (what
    more than HEARTBEAT_EXPIRY of silence looks like): (its process, its job id)."""
    import sqlite3

    data = tmp_path / "data"
    proc = start_cli(cli_env, tmp_path, "run", "ping", "--input", '{"hold_seconds": 1.5}')
    wait_for(lambda: step_running(data, "check-journal"), what="check-journal to run")
    job_id = step_running(data, "check-journal")
    os.kill(proc.pid, signal.SIGSTOP)
    conn = sqlite3.connect(data / "journal.sqlite3", timeout=10)
    with conn:
        conn.execute("UPDATE jobs SET heartbeat_at = heartbeat_at - 3600 WHERE job_id = ?", (job_id,))
    conn.close()
    return proc, job_id


def test_a_paused_owner_keeps_its_job_through_other_commands_and_finishes_it(
    cli, cli_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP an owner past its heartbeat's expiry (a Ctrl-Z, a suspended laptop) while other
    commands open the journal: the job stays running, and continued, the owner finishes it."""
    proc, job_id = _stopped_owner_past_expiry(cli_env, tmp_path)
    try:
        listed = cli("jobs", "list", "--json")
        assert [j["state"] for j in json.loads(listed.stdout) if j["job_id"] == job_id] == ["running"]
        assert json.loads(cli("jobs", "show", job_id, "--json").stdout)["state"] == "running"
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "succeeded" and [s["state"] for s in shown["steps"]] == ["succeeded"] * 3
    assert "interrupted" not in [e["state"] for e in shown["events"]]


def test_a_paused_owner_is_fenced_once_another_process_resumed_its_job(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP an owner until its heartbeat expires, resume the job elsewhere, SIGCONT the owner: the
    job runs once to its end under the new owner; the old one records nothing more and exits 130."""
    proc, job_id = _stopped_owner_past_expiry(cli_env, tmp_path)
    try:
        resumed = cli("jobs", "resume", job_id, "--json")
        assert resumed.code == 0, resumed.stderr
        assert json.loads(resumed.stdout)["state"] == "succeeded"
        events_before = json.loads(cli("jobs", "show", job_id, "--json").stdout)["events"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"job {job_id} was taken over by another process" in err
    shown = json.loads(cli("jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "succeeded" and [s["state"] for s in shown["steps"]] == ["succeeded"] * 3
    assert shown["events"] == events_before  # the old owner wrote nothing after the take-over
