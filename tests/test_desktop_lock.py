"""The VM desktop lock (one GUI job at a time per VM) held by a process that is stopped: a GUI job
that waits for it says who holds it and that it is stopped, instead of waiting in silence (the
wait was an info line, which the CLI does not show); and it goes on once the holder lets go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixture_jobs import wait_for
from fixture_sshd import free_port

from win_automation.config import load_config
from win_automation.jobs.locks import holder, lock_path, vm_lock

HOLD = """
import os, signal, sys, time
from pathlib import Path
from win_automation.jobs.locks import vm_lock
with vm_lock(Path(sys.argv[1]), sys.argv[2], owner="20261205T000000000Z-0123456789ab"):
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # as Ctrl-Z in the terminal of a GUI job
    time.sleep(0.5)
"""


def test_a_gui_job_waiting_for_a_stopped_holder_says_so_and_goes_on_once_it_lets_go(
    cli_env: dict[str, str],
) -> None:
    env = {**cli_env, "WIN_AUTOMATION_SSH_HOST": "127.0.0.1", "WIN_AUTOMATION_SSH_PORT": str(free_port())}
    config = load_config(environ=env).config
    data, vm = config.data.dir, config.ssh.vm_key
    holding = subprocess.Popen([sys.executable, "-c", HOLD, str(data), vm], stdout=subprocess.PIPE, text=True)
    waiting: subprocess.Popen[str] | None = None
    try:
        assert holding.stdout is not None and holding.stdout.readline() == "held\n"
        wait_for(lambda: "stopped" in holder(lock_path(data, vm)), 10, "the holder to stop")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "win_automation", "aloha", "run", "--task", "open Notepad"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # the first thing it says, while it waits
        assert "waiting for the VM desktop: another GUI job holds it" in line, line
        assert f"pid {holding.pid}, job 20261205T000000000Z-0123456789ab; that process is stopped" in line
        assert f"continue it (kill -CONT {holding.pid}) or end it" in line
        time.sleep(1.0)
        assert waiting.poll() is None  # still waiting: the desktop is not taken from its holder
        os.kill(holding.pid, signal.SIGCONT)
        assert holding.wait(10) == 0
        rest = waiting.communicate(timeout=60)[1]
        # the desktop free, the job went on: to the VM, which is not there (nothing on that port)
        assert waiting.returncode == 3 and "Connection refused" in rest, rest
    finally:
        for proc in (holding, waiting):
            if proc is not None:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                proc.communicate()


def test_the_lock_file_names_its_holder(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "vm:22")
    with vm_lock(tmp_path, "vm:22", owner="job-1"):
        assert holder(path) == f"pid {os.getpid()}, job job-1"
    path.write_text("not a pid\n")
    assert holder(path) == ""
    path.unlink()
    os.mkfifo(path)  # in the lock's place: who holds it is read as nobody, not waited for
    assert holder(path) == ""
