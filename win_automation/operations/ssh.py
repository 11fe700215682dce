"""Remote commands on the VM: PowerShell or cmd, streamed, with deadlines that kill the remote tree.

- `run_command(conn, command, shell=...)`: PowerShell goes as `-EncodedCommand` (or, when too long
  for a command line, is uploaded over SFTP, run with `-File` and removed); cmd mode passes the
  command as given to the VM's shell.
- `run_script(conn, text, args)`: a .ps1 file's text with its arguments.
- `run_idempotent(conn, command, check)`: skip the command when `check` exits 0.

Past the deadline the command's process tree is killed on the VM, not only the channel:
- `remote_os = "windows"`: a unique needle is in the command line (the start of the encoded
  script, which names the run id, or the uploaded script's file name; cmd mode goes through an
  encoded script too), and `kill_tree_script` taskkills (/T /F) every process holding it.
- `remote_os = "posix"` (a Linux sshd, as in the tests): the command first prints its shell's PID
  (the session leader) on stderr, which is taken out of the output, and `pkill -KILL -s PID` kills
  its whole session. A stop that comes before the PID (sshd may send the first output ahead of
  it) waits for it, at most PID_WAIT.
Through the warm-connection helper the request names that kill (`_kill_line`; `{pid}` for the
posix PID, which the helper reads as it relays stderr): the helper runs it should this process
die mid-command (SIGKILL), as it then can kill nothing itself (win_automation.adapters.persist_orphan).
Results are `CommandResult`s; a timed-out one has exit code 124 and `timed_out`.

With `warm=True` (ssh.warm_powershell; the Vm decides when it applies) PowerShell runs in the
executor's warm session (win_automation.adapters.warm_powershell) instead of a powershell.exe of
its own: the same wrapped script, sent over the session's stdin whatever its length (no upload),
the same decoding; past the deadline or on cancel the session's process tree is killed by its PID
(`taskkill /T /F /PID`, or `pkill -s` on posix) and the next command gets a new session.

Output can be streamed to files (`stdout_file`/`stderr_file`, e.g. a job's artifact files) as it
arrives: the bytes the VM sent (less the PID marker), written at once; the result then holds
only each stream's last TAIL_BYTES (flagged `stdout_truncated`/`stderr_truncated`), so memory
stays flat whatever the command prints. Without files each stream keeps its last KEPT_BYTES
(64 MiB, flagged the same way). Each stream: win_automation.operations.output_stream.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from typing import Literal

from win_automation import deadlines
from win_automation.adapters.execution import ExecOutcome, Executor, SessionSpec, held_for_pid
from win_automation.adapters.persist import WarmConnection
from win_automation.errors import UsageError
from win_automation.operations import powershell, winscripts
from win_automation.operations.command_result import (
    CANCELLED_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    CommandResult,
    Shell,
    signed32,
)
from win_automation.operations.output_stream import Files, OutputCapped, OutputStream, TextSink
from win_automation.partfiles import is_stale, owner_tag

log = logging.getLogger(__name__)

Cancelled = Callable[[], bool]
RemoteOs = Literal["windows", "posix"]

KILL_TIMEOUT = 30.0
INTERRUPT_KILL_TIMEOUT = 5.0
"""Seconds an interrupted command (Ctrl-C, SIGTERM) waits for its remote tree to be killed."""
SCRIPT_PREFIX = ".wa-script-"


def _run_id() -> str:
    return uuid.uuid4().hex


POSIX_KILL = "pkill -KILL -s {pid}"
"""Kills a posix command's whole session (`{pid}`: its session leader, named by the marker)."""


def session_spec(remote_os: RemoteOs) -> SessionSpec:
    """How the VM's warm PowerShell session is started (ssh.warm_powershell)."""
    server = winscripts.script_text("Start-WarmPowerShell")
    posix = remote_os == "posix"
    return SessionSpec(
        powershell.session_launch(posix),
        powershell.session_bootstrap(server),
        POSIX_KILL if posix else "taskkill.exe /T /F /PID {pid}",
    )


def _kill_line(remote_os: RemoteOs, needle: str | None) -> str:
    """The command line that kills a command's remote tree; on posix `{pid}` in it stands for
    the PID the command printed first (see _execute), on Windows the needle finds it."""
    if remote_os == "posix":
        return POSIX_KILL
    assert needle is not None
    return powershell.encoded_command_line(powershell.kill_tree_script(needle))


def _kill(
    conn: Executor,
    remote_os: RemoteOs,
    needle: str | None,
    pid: int | None,
    session: SessionSpec | None = None,
    timeout: float = KILL_TIMEOUT,
) -> None:
    if session is not None:  # a warm session's own process tree, by the PID its ready line named
        if pid is None:
            log.warning("the warm session named no PID; cannot kill it", extra={"op": "ssh.kill"})
            return
        command = session.kill.format(pid=int(pid))
    elif remote_os == "posix" and pid is None:
        log.warning("no PID seen; cannot kill the remote process", extra={"op": "ssh.kill"})
        return
    else:
        command = _kill_line(remote_os, needle).replace("{pid}", str(pid))
    outcome = conn.exec(command, timeout=timeout)
    log.info(
        "killed the remote process tree",
        extra={"op": "ssh.kill", "pid": pid, "status": outcome.exit_status},
    )


def _once_pid_is_known(stop: Cancelled, err: OutputStream) -> Cancelled:
    """`stop`, held back until the command's PID marker came (or its stderr began without one)."""
    return held_for_pid(stop, lambda: err.pid is None and err.await_marker)


def _execute(
    conn: Executor,
    line: str,
    *,
    display: str,
    shell: Shell,
    remote_os: RemoteOs,
    needle: str | None,
    timeout: float | None,
    on_stdout: TextSink | None,
    on_stderr: TextSink | None,
    cancelled: Cancelled | None = None,
    files: Files = (None, None),
    session: SessionSpec | None = None,
) -> CommandResult:
    """Run `line` (with `session`: the script to run in that warm session) and read it back."""
    marker = remote_os == "posix" and session is None
    if marker:
        line = f"printf '\\036wa-pid:%s\\n' \"$$\" >&2; {line}"
    failures: list[Exception] = []  # the output files' write errors: the command is stopped
    out = OutputStream(on_stdout, pid_marker=False, clixml=False, file=files[0], failures=failures)
    err = OutputStream(
        on_stderr, pid_marker=marker, clixml=shell == "powershell", file=files[1], failures=failures
    )
    if files != (None, None):
        asked = cancelled
        cancelled = lambda: bool(failures) or (asked is not None and asked())  # noqa: E731
    if marker and cancelled is not None:
        cancelled = _once_pid_is_known(cancelled, err)
    try:
        run: Callable[..., ExecOutcome] = conn.exec
        if session is not None:
            run = functools.partial(conn.run_in_session, session)
        elif isinstance(conn, WarmConnection):
            # killed outright (SIGKILL), this process kills nothing (below): the helper does
            run = functools.partial(conn.exec, kill=_kill_line(remote_os, needle))
        with deadlines.within(timeout):  # a live-output sink waits for its reader at most until then
            outcome = run(
                line, timeout=timeout, on_stdout=out.feed, on_stderr=err.feed, cancelled=cancelled, keep=False
            )
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM, SIGHUP (win_automation.interrupts): the channel ends with it, the
        # command does not (one that prints nothing ran on, and `jobs resume` ran it twice). A
        # warm session's tree is killed where it runs (its PID is there: the pool, the helper).
        if session is None:
            with contextlib.suppress(Exception):
                _kill(conn, remote_os, needle, err.pid, timeout=INTERRUPT_KILL_TIMEOUT)
        raise
    stdout = out.text()
    stderr = err.text()
    killed = outcome.pid if session is not None else err.pid
    if shell == "powershell":
        stderr = powershell.strip_clixml(stderr)
    if outcome.timed_out:
        _kill(conn, remote_os, needle, killed, session)
        log.warning(
            "command timed out; its remote process tree was killed",
            extra={"op": "ssh.run", "timeout_s": timeout},
        )
        code = TIMEOUT_EXIT_CODE
    elif outcome.cancelled:
        _kill(conn, remote_os, needle, killed, session)
        # info: the job's error and the CLI's own error line say it (a reader that went away
        # cancels too, and its CLI says nothing at all)
        log.info("command cancelled; its remote process tree was killed", extra={"op": "ssh.run"})
        code = CANCELLED_EXIT_CODE
    else:
        assert outcome.exit_status is not None
        code = signed32(outcome.exit_status)
    result = CommandResult(
        command=display,
        shell=shell,
        exit_code=code,
        stdout=stdout,
        stderr=stderr,
        duration_ms=outcome.duration_ms,
        timed_out=outcome.timed_out,
        cancelled=outcome.cancelled,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
    )
    if failures:  # its output could not be kept (the command was stopped): that is the result
        if isinstance(failures[0], OutputCapped):
            failures[0].streams = result  # what the files kept, for the step's output
        raise failures[0]
    return result


def run_powershell(
    conn: Executor,
    body: str,
    *,
    args: tuple[str, ...] = (),
    remote_os: RemoteOs = "windows",
    timeout: float | None = None,
    on_stdout: TextSink | None = None,
    on_stderr: TextSink | None = None,
    display: str | None = None,
    cancelled: Cancelled | None = None,
    files: Files = (None, None),
    warm: bool = False,
) -> CommandResult:
    """Run PowerShell `body` (with `args`): encoded, or uploaded and run with -File when long;
    with `warm`, in the executor's warm PowerShell session."""
    run_id = _run_id()
    script = powershell.wrap_script(body, args, run_id)

    def execute(line: str, needle: str | None, session: SessionSpec | None = None) -> CommandResult:
        return _execute(
            conn,
            line,
            display=display if display is not None else body,
            shell="powershell",
            remote_os=remote_os,
            needle=needle,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            cancelled=cancelled,
            files=files,
            session=session,
        )

    if warm:
        return execute(script, None, session_spec(remote_os))
    if not powershell.needs_upload(script):
        return execute(powershell.encoded_command_line(script), powershell.encoded_needle(script))
    for name, mtime in conn.list_folder("."):  # left by a process killed while it ran
        if name.startswith(SCRIPT_PREFIX) and is_stale(name, mtime):
            conn.remove(name)
    path = f"{SCRIPT_PREFIX}{owner_tag()}.ps1"
    data = script.encode("utf-8-sig")  # Windows PowerShell reads a BOM-less .ps1 as ANSI
    conn.put_bytes(path, data)
    log.debug("script uploaded for -File", extra={"op": "ssh.run", "path": path, "bytes": len(data)})
    try:
        return execute(powershell.file_command_line(path), path)
    finally:
        conn.remove(path)


def run_command(
    conn: Executor,
    command: str,
    *,
    shell: Shell = "powershell",
    remote_os: RemoteOs = "windows",
    timeout: float | None = None,
    on_stdout: TextSink | None = None,
    on_stderr: TextSink | None = None,
    cancelled: Cancelled | None = None,
    files: Files = (None, None),
    warm: bool = False,
) -> CommandResult:
    """Run `command` on the VM in PowerShell or in cmd (passed as given to the VM's shell); with
    `warm`, what goes through PowerShell runs in the warm session."""
    if shell == "cmd" and remote_os == "posix":
        if (size := len(command.encode("utf-8"))) > powershell.MAX_SENT_COMMAND:
            # sshd resets the whole connection on it, which would look like a network fault
            raise UsageError(
                f"the cmd command is {size // 1024} KiB, over the {powershell.MAX_SENT_COMMAND // 1024}"
                " KiB that fit the sshd's request; run it as a PowerShell script instead"
            )
        return _execute(
            conn,
            command,
            display=command,
            shell="cmd",
            remote_os=remote_os,
            needle=None,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            cancelled=cancelled,
            files=files,
        )
    script = command
    if shell == "cmd":
        # Windows cmd mode goes through PowerShell's -EncodedCommand too, which survives whichever
        # default shell the VM's sshd has (cmd.exe, or PowerShell as Install-WinAutomation.ps1
        # sets it): cmd.exe gets the command line as given (Windows PowerShell quotes an argument
        # with spaces, and /s strips exactly those outer quotes). The encoded script names the run.
        script = f"& cmd.exe /d /s /c {powershell.quote_literal(command)}"
    result = run_powershell(
        conn,
        script,
        remote_os=remote_os,
        timeout=timeout,
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        display=command,
        cancelled=cancelled,
        files=files,
        warm=warm,
    )
    return result.model_copy(update={"shell": shell}) if shell == "cmd" else result


def run_idempotent(
    conn: Executor,
    command: str,
    check: str,
    *,
    shell: Shell = "powershell",
    remote_os: RemoteOs = "windows",
    timeout: float | None = None,
    on_stdout: TextSink | None = None,
    on_stderr: TextSink | None = None,
    warm: bool = False,
) -> tuple[CommandResult, CommandResult | None]:
    """Run `check`; when it exits 0 the command is skipped, else it runs.

    Returns (the check's result, the command's result or None when skipped).
    """
    checked = run_command(conn, check, shell=shell, remote_os=remote_os, timeout=timeout, warm=warm)
    if checked.ok:
        log.info("check passed; command skipped", extra={"op": "ssh.run", "check": check})
        return checked, None
    result = run_command(
        conn,
        command,
        shell=shell,
        remote_os=remote_os,
        timeout=timeout,
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        warm=warm,
    )
    return checked, result


def skipped_result(command: str, shell: Shell) -> CommandResult:
    """The result recorded for a command that an idempotency check skipped."""
    return CommandResult(
        command=command, shell=shell, exit_code=0, stdout="", stderr="", duration_ms=0, skipped=True
    )
