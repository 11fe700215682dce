"""`artifacts list|fetch|verify|prune` as users meet them: real CLI processes on real folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

from win_automation.artifacts.store import ArtifactWriter
from win_automation.jobs.ids import new_job_id, new_trace_id


def ping(cli) -> str:  # type: ignore[no-untyped-def]
    res = cli("run", "ping", "--json")
    assert res.code == 0, res.stderr
    return str(json.loads(res.stdout)["job_id"])


def test_list_verify_fetch(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = ping(cli)
    listed = json.loads(cli("artifacts", "list", "--job", job, "--json").stdout)
    assert listed["job_id"] == job and [a["path"] for a in listed["artifacts"]] == ["ping.json"]
    assert "ping.json" in cli("artifacts", "list", "--job", job).stdout
    ok = cli("artifacts", "verify", "--job", job)
    assert ok.code == 0 and "1 artifact(s)" in ok.stdout and "match the manifest" in ok.stdout
    fetched = cli("artifacts", "fetch", "--job", job, "--out", str(tmp_path / "out"))
    assert fetched.code == 0, fetched.stderr
    copy = tmp_path / "out" / job
    assert (copy / "ping.json").read_bytes() == (tmp_path / "artifacts" / job / "ping.json").read_bytes()
    assert json.loads((copy / "manifest.json").read_text())["job_id"] == job


def test_a_tampered_artifact_fails_verify_and_fetch(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = ping(cli)
    target = tmp_path / "artifacts" / job / "ping.json"
    target.write_text(target.read_text().replace("ping", "pong"))
    for args in (["verify"], ["fetch", "--out", str(tmp_path / "out")]):
        res = cli("artifacts", *args, "--job", job)
        assert res.code == 1, res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "1 file(s) do not match the manifest: ping.json (sha256" in res.stderr
    assert not (tmp_path / "out" / job / "ping.json").exists()
    assert not (tmp_path / "out" / job / "manifest.json").exists()


def test_missing_folder_is_no_artifacts_exit_66(cli) -> None:  # type: ignore[no-untyped-def]
    job = new_job_id()
    res = cli("artifacts", "verify", "--job", job)
    assert res.code == 66 and f"no artifacts for job {job}: " in res.stderr and "does not exist" in res.stderr


def test_prune_applies_retention_with_dry_run_and_the_configured_default(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "artifacts"
    now = time.time()
    ages = {"new": 3600.0, "two-days": 2 * 86400.0, "ten-days": 10 * 86400.0}
    ids = {}
    for label, age in ages.items():
        writer = ArtifactWriter(
            root,
            new_job_id(now - age),
            new_trace_id(),
            now - age,
            types=("ssh", "ping", "aloha", "playwright"),
        )
        writer.write_text("aloha", "response.json", "{}")
        ids[label] = writer.job_id
    dry = cli("artifacts", "prune", "--dry-run", "--json")
    planned = json.loads(dry.stdout)
    assert (planned["dry_run"], planned["pruned"]) == (True, [ids["ten-days"]]) and planned["bytes"] > 2
    assert (root / ids["ten-days"]).exists()
    res = cli("artifacts", "prune")
    assert res.code == 0 and f"pruned {ids['ten-days']}" in res.stdout
    assert sorted(p.name for p in root.iterdir()) == sorted([ids["new"], ids["two-days"]])
    by_env = cli("artifacts", "prune", env={"WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS": "1"})
    assert by_env.code == 0 and f"pruned {ids['two-days']}" in by_env.stdout
    by_option = cli("artifacts", "prune", "--older-than", "30m")
    assert f"pruned {ids['new']}" in by_option.stdout and list(root.iterdir()) == []
    bad = cli("artifacts", "prune", "--older-than", "a week")
    assert bad.code == 2 and "--older-than: must be a duration" in bad.stderr


def test_progress_bar_only_on_a_terminal(cli, cli_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shlex
    import subprocess
    import sys

    job = ping(cli)
    piped = cli("artifacts", "verify", "--job", job)
    assert "━" not in piped.stdout + piped.stderr
    command = shlex.join([sys.executable, "-m", "win_automation", "artifacts", "verify", "--job", job])
    env = {**cli_env, "TERM": "xterm"}  # a terminal that draws (under TERM=dumb rich draws no bar)
    tty = subprocess.run(
        ["script", "-qec", command, "/dev/null"], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    out = tty.stdout.decode("utf-8", "replace")
    assert tty.returncode == 0 and f"verify {job}" in out and "━" in out and "match the manifest" in out
