"""Browser jobs on the Hatchet engine: the real worker process (fake engine on the SDK's own gRPC
stubs) runs `playwright screenshot` and `playwright run` against the real launch-server.js; the
payloads hold paths and results, never the PNG or the wsPath."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_hatchet import HatchetWorld, WorkerProcess
from fixture_playwright import PlaywrightServer, WebServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hatchet_worker(hatchet_world: HatchetWorld, pw_server: PlaywrightServer) -> Iterator[WorkerProcess]:
    """The module's worker, next to the Playwright server (its VM's browser)."""
    hatchet_world.env.update(pw_server.env())
    worker = hatchet_world.start_worker("--slots", "4", "--grace", "10s")
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


def test_screenshot_and_script_on_hatchet(
    hatchet_world: HatchetWorld, hatchet_worker: WorkerProcess, pw_server: PlaywrightServer, web: WebServer
) -> None:
    shot = hatchet_world.cli("playwright", "screenshot", web.url("/"), "--engine", "hatchet", "--json")
    assert shot.code == 0, shot.stderr
    outcome = json.loads(shot.stdout)
    assert outcome["state"] == "succeeded"
    png = hatchet_world.artifacts / outcome["job_id"] / "screenshot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert outcome["outputs"]["screenshot"]["size_bytes"] == png.stat().st_size
    run = next(r for r in hatchet_world.engine.runs.values() if r.metadata.get("job_id") == outcome["job_id"])
    payload = json.dumps(run.tasks["screenshot"].output)
    assert len(payload) < 1000 and pw_server.ws_path not in payload
    assert pw_server.ws_path not in json.dumps([run.input, run.metadata])  # the run's metadata

    script = hatchet_world.root / "title.py"
    script.write_text(
        "def run(page, context, input):\n    page.goto(input)\n    return {'len': len(page.content())}\n"
    )
    ran = hatchet_world.cli(
        "playwright", "run", str(script), "--input", json.dumps(web.url("/")), "--engine", "hatchet", "--json"
    )
    assert ran.code == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"]["run"]["result"]["len"] > 100

    failing = hatchet_world.root / "fails.py"
    failing.write_text("def run(page, context, input):\n    raise RuntimeError('no luck')\n")
    failed = hatchet_world.cli("playwright", "run", str(failing), "--engine", "hatchet")
    assert failed.code == 1
    assert "fails.py raised RuntimeError at line 2: no luck" in failed.stderr.strip().splitlines()[-1]
    for text in (shot.stdout, shot.stderr, ran.stdout, ran.stderr, failed.stderr, hatchet_worker.log()):
        assert pw_server.ws_path not in text
    journal = (hatchet_world.data_dir / "journal.sqlite3").read_bytes()
    assert pw_server.ws_path.encode() not in journal
    assert Path(hatchet_world.artifacts).exists()
