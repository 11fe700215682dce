"""The circuit breaker's faults: a row it cannot read, a clock stepped back, a trial whose process
was killed. Real journals; the killed holder is a real process; the CLI runs as a subprocess
against an SSH port where nothing listens (the pass fails at once, the breaker still counts it)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from win_automation.jobs.breaker import Breaker, BreakerState
from win_automation.jobs.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()


def _set_row(data: Path, name: str, **values: object) -> None:
    with Journal.open(data, recover=False) as journal:
        Breaker(journal, name, threshold=1, cooldown=60).view()  # the row exists
    conn = sqlite3.connect(data / "journal.sqlite3")
    with conn:
        columns = ", ".join(f"{key} = ?" for key in values)
        conn.execute(f"UPDATE breakers SET {columns} WHERE name = ?", (*values.values(), name))
    conn.close()


def _row(data: Path) -> dict[str, Any]:
    conn = sqlite3.connect(data / "journal.sqlite3")
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM breakers").fetchone())
    conn.close()
    return row


BAD_ROWS = [
    ({"state": "bogus"}, "state 'bogus'"),
    ({"state": "open", "opened_at": "garbage"}, "opened_at 'garbage'"),
    ({"failures": "lots"}, "failures 'lots'"),
    ({"state": "half-open", "lease_owner": "x", "lease_until": "soon"}, "lease_until 'soon'"),
]


@pytest.mark.parametrize(("values", "named"), BAD_ROWS)
def test_unreadable_row_is_reset_to_closed_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, values: dict[str, object], named: str
) -> None:
    _set_row(tmp_path, "vm:x", **values)
    with Journal.open(tmp_path, recover=False) as journal, caplog.at_level(logging.WARNING):
        breaker = Breaker(journal, "vm:x", threshold=1, cooldown=60)
        view = breaker.view()
        assert (view.state, view.failures, view.opened_at, view.lease_owner) == (
            BreakerState.CLOSED,
            0,
            None,
            None,
        )
        assert breaker.acquire("a").mode == "closed"  # then it works as a breaker again
        assert [t.after for t in breaker.record(breaker.acquire("a"), success=False)] == [BreakerState.OPEN]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "vm:x" in warnings[0] and named in warnings[0], warnings
    assert "reset to closed" in warnings[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.fixture
def refused(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with an SSH port that refuses: every pass fails (the ssh check),
    quickly, and the breaker counts it."""
    port = _free_port()
    return {
        "WIN_AUTOMATION_SSH_HOST": "127.0.0.1",
        "WIN_AUTOMATION_SSH_PORT": str(port),
        "WIN_AUTOMATION_SSH_USER": "nobody",
        "WIN_AUTOMATION_SSH_KEY_FILE": str(tmp_path / "no_key"),
        "WIN_AUTOMATION_SSH_USE_AGENT": "false",
        "WIN_AUTOMATION_SSH_PERSIST": "0",
        "WIN_AUTOMATION_SUPERVISOR_CHECK_TIMEOUT": "2s",
        "WIN_AUTOMATION_SUPERVISOR_BREAKER_THRESHOLD": "3",
        "WIN_AUTOMATION_SUPERVISOR_BREAKER_COOLDOWN": "1m",
        "_name": f"vm:127.0.0.1:{port}",
        "_data": cli_env["WIN_AUTOMATION_DATA_DIR"],
    }


def _cli_env(refused: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in refused.items() if not k.startswith("_")}


@pytest.mark.parametrize(("values", "named"), BAD_ROWS[:3])
def test_cli_heals_an_unreadable_row_in_status_and_in_a_pass(
    cli: Any, refused: dict[str, str], values: dict[str, object], named: str
) -> None:
    data, env = Path(refused["_data"]), _cli_env(refused)
    _set_row(data, refused["_name"], **values)
    shown = cli("supervisor", "status", env=env)
    assert shown.code == 0 and "Traceback" not in shown.stderr, shown.stderr
    warned = [line for line in shown.stderr.splitlines() if "level=warn" in line]
    assert len(warned) == 1 and refused["_name"] in warned[0] and named in warned[0], shown.stderr
    assert "breaker: closed" in shown.stdout
    _set_row(data, refused["_name"], **values)
    ran = cli("supervisor", "run", "--once", "--json", env=env)
    assert ran.code == 1, ran.stderr  # the ssh check fails: the pass ran, the breaker counted it
    assert "Traceback" not in ran.stderr and "not a valid" not in ran.stderr
    report = json.loads(ran.stdout)
    assert report["checks"][0]["name"] == "ssh" and report["checks"][0]["status"] == "fail"
    row = _row(data)
    assert (row["state"], row["failures"], row["lease_owner"]) == ("closed", 1, None)


def test_clock_stepped_back_caps_the_cooldown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [1_000_000.0]
    with Journal.open(tmp_path, recover=False) as journal:
        breaker = Breaker(journal, "vm:x", threshold=1, cooldown=60, clock=lambda: now[0])
        breaker.record(breaker.acquire("a"), success=False)
        now[0] -= 86400  # the clock steps back a day
        with caplog.at_level(logging.WARNING):
            assert breaker.view().remaining(now[0]) == 60.0
            permit = breaker.acquire("a")
        assert permit.mode == "open" and permit.remaining == 60.0
        assert any("clock stepped back" in r.getMessage() for r in caplog.records)
        now[0] += 60.0
        assert breaker.acquire("a").mode == "trial"  # one cooldown later, not a day
        now[0] -= 86400  # and again, during the trial: its lease lasts no more than `lease`
        assert breaker.acquire("b").mode == "open"
        now[0] += 600.0
        assert breaker.acquire("b").mode == "trial"


def test_cli_clock_stepped_back_keeps_the_cooldown(cli: Any, refused: dict[str, str]) -> None:
    data, env = Path(refused["_data"]), _cli_env(refused)
    _set_row(data, refused["_name"], state="open", failures=3, opened_at=time.time() + 86400)
    ran = cli("supervisor", "run", "--once", env=env)
    assert ran.code == 75, ran.stderr
    left = [line for line in ran.stdout.splitlines() if line.startswith("breaker: open")]
    assert left and int(left[0].split("(")[1].split("s")[0]) <= 60, ran.stdout
    assert "clock stepped back" in ran.stderr


HOLDER = textwrap.dedent(
    """
    import socket, os, sys, time
    from pathlib import Path
    from win_automation.jobs.journal import Journal
    from win_automation.jobs.breaker import Breaker
    owner = f"{socket.gethostname()}:{os.getpid()}:job-trial"
    with Journal.open(Path(sys.argv[1]), recover=False) as journal:
        permit = Breaker(journal, sys.argv[2], threshold=1, cooldown=0.01).acquire(owner)
    print(permit.mode, owner, flush=True)
    time.sleep(300)  # the trial pass, killed here
    """
)


def _trial_holder(data: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    """A real process holding the half-open trial of `name` (open, cooldown over, first)."""
    _set_row(data, name, state="open", failures=1, opened_at=time.time() - 3600)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data), name], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    mode, owner = proc.stdout.readline().split()
    assert mode == "trial"
    return proc, owner


def test_a_killed_trial_holder_is_taken_over_at_once(tmp_path: Path) -> None:
    proc, holder = _trial_holder(tmp_path, "vm:x")
    try:
        with Journal.open(tmp_path, recover=False) as journal:
            breaker = Breaker(journal, "vm:x", threshold=1, cooldown=0.01)
            alive = breaker.acquire("other")
            assert alive.mode == "open" and alive.holder == holder  # a live trial keeps its lease
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            taken = breaker.acquire("other")
            assert taken.mode == "trial"  # at once, not after the 600 s lease
            assert breaker.view().lease_owner == "other"
            moved = breaker.record(taken, success=True)
            assert [(t.before, t.after) for t in moved] == [(BreakerState.HALF_OPEN, BreakerState.CLOSED)]
    finally:
        proc.kill()
        proc.communicate()


def test_a_reused_pid_is_not_the_trial_holder(tmp_path: Path) -> None:
    """This process's pid with another start time: the holder's pid went to another process."""
    _set_row(
        tmp_path,
        "vm:x",
        state="half-open",
        lease_owner=f"{HOST}:{os.getpid()}:job-old|start=1",
        lease_until=time.time() + 600,
    )
    with Journal.open(tmp_path, recover=False) as journal:
        assert Breaker(journal, "vm:x", threshold=1, cooldown=60).acquire("other").mode == "trial"


def test_cli_pass_after_a_killed_trial_is_the_new_trial(cli: Any, refused: dict[str, str]) -> None:
    data, env = Path(refused["_data"]), _cli_env(refused)
    proc, holder = _trial_holder(data, refused["_name"])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    ran = cli("supervisor", "run", "--once", "--json", env=env)
    assert ran.code == 1, ran.stderr  # the trial ran (and failed), not 75 "a trial runs elsewhere"
    assert f"the trial's holder {holder} is gone" in ran.stderr
    report = json.loads(ran.stdout)
    assert report["mode"] == "trial"
    assert [(t["from"], t["to"]) for t in report["transitions"]] == [("half-open", "open")]
    assert _row(data)["lease_owner"] is None
