"""Overhead of an `aloha-task` job over driving the Aloha stand-ins directly with httpx.

Run: .venv/bin/python benchmarks/aloha_bench.py [--tasks 20] [--steps 3] [--step-ms 100] [--poll-ms 50]

Starts the tests' Aloha stand-ins (tests/aloha_standin.py: a client whose sampling loop asks the
server for each step and "acts" for --step-ms) and the tests' sshd (tests/fixture_sshd.py, whose
powershell.exe stand-in answers the desktop probe; run as root for its test login). Per task,
interleaved, same task length and poll interval on both sides:

- direct: one httpx.Client does what the job does over HTTP: `GET /` on the server and the
  client, `POST /run_task`, then the end-of-task probe every --poll-ms until it stops answering 409;
- job: `dispatch.run_job(config, aloha_task, ...)` on the local engine in this process: the
  journal, the desktop probe over SSH, the same requests through adapters/aloha, response.json
  and its manifest.

Prints the medians, the overhead per task and the ratio; target: job <= 50 ms + 1.2 x direct.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from aloha_standin import AlohaClient, AlohaServer  # noqa: E402
from fixture_sshd import SshServer  # noqa: E402

from win_automation.config import load_config  # noqa: E402
from win_automation.engines import dispatch  # noqa: E402
from win_automation.operations.aloha import PROBE_SERVER_URL, PROBE_TASK  # noqa: E402
from workflows.aloha_task import aloha_task  # noqa: E402

TASK = "Open Notepad and type hello"


def direct(server: AlohaServer, client: AlohaClient, poll: float) -> float:
    started = time.perf_counter()
    with httpx.Client(trust_env=False) as http:
        assert http.get(server.url + "/").status_code == 200
        assert http.get(client.url + "/").status_code == 404
        body = {"task": TASK, "server_url": server.url + "/generate_action"}
        assert http.post(client.url + "/run_task", json=body).status_code == 200
        probe = {"task": PROBE_TASK, "max_steps": 1, "server_url": PROBE_SERVER_URL}
        while True:
            time.sleep(poll)
            if http.post(client.url + "/run_task", json=probe).status_code != 409:
                break
    return time.perf_counter() - started


def job(config: object, poll: float) -> float:
    started = time.perf_counter()
    model = aloha_task.input.model_validate({"task": TASK})
    outcome = dispatch.run_job(config, aloha_task, model, engine="local")  # type: ignore[arg-type]
    assert outcome.exit_code == 0, outcome.error
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=100)
    parser.add_argument("--poll-ms", type=float, default=50)
    args = parser.parse_args()
    poll = args.poll_ms / 1000
    sshd = SshServer()
    sshd.start()
    server = AlohaServer(stop_after=args.steps)
    client = AlohaClient(step_seconds=args.step_ms / 1000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            known = sshd.write_known_hosts(Path(tmp) / "known_hosts")
            env = {
                **sshd.env(known),
                "WIN_AUTOMATION_DATA_DIR": f"{tmp}/data",
                "WIN_AUTOMATION_ARTIFACT_OUT": f"{tmp}/artifacts",
                "WIN_AUTOMATION_ALOHA_SERVER_URL": server.url + "/",
                "WIN_AUTOMATION_ALOHA_CLIENT_URL": client.url,
                "WIN_AUTOMATION_ALOHA_POLL_INTERVAL": f"{args.poll_ms}ms",
            }
            config = load_config(None, env).config
            job(config, poll)  # warm: SSH connection, imports, journal
            direct(server, client, poll)
            client.wait_idle()
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(args.tasks):
                theirs.append(direct(server, client, poll))
                client.wait_idle()
                ours.append(job(config, poll))
                client.wait_idle()
    finally:
        client.stop()
        server.stop()
        sshd.close()
    d, j = statistics.median(theirs), statistics.median(ours)
    print(f"tasks: {args.tasks} of {args.steps} steps x {args.step_ms:g} ms, poll every {args.poll_ms:g} ms")
    print(f"direct httpx:    median {d * 1000:8.1f} ms per task")
    print(f"aloha-task job:  median {j * 1000:8.1f} ms per task")
    print(f"overhead:        {(j - d) * 1000:8.1f} ms per task ({j / d:.2f}x)")
    limit = 0.050 + 1.2 * d
    verdict = "within" if j <= limit else "OVER"
    print(f"target: job <= 50 ms + 1.2 x direct = {limit * 1000:.1f} ms: {verdict}")


if __name__ == "__main__":
    main()
