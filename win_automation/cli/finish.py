"""`run_to_end(main)`: run the CLI as the interpreter runs a script (its exit status, atexit
handlers, flushed output), for a caller that then ends the process with `os._exit`: the
interpreter's teardown is skipped. That teardown frees every module's objects, and a paramiko
channel or SFTP file freed there closes itself, through locks that an interrupted call may have
left held (win_automation.adapters.ssh, `SshConnection.abandon`): the exit would wait forever."""

from __future__ import annotations

import atexit
import contextlib
import sys
from collections.abc import Callable


def _exit_status(code: object) -> int:
    """A SystemExit code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


def run_to_end(main: Callable[[], object]) -> tuple[int, int | None]:
    """Run `main()`, then what the interpreter runs at exit: (exit status, signal to die by)."""
    import signal
    import threading

    die_by = None
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:  # one a command did not take: die by SIGINT, without a traceback
        status, die_by = 130, int(signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = status or 120  # as the interpreter does when flushing stdout fails
    return status, die_by
