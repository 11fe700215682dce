"""The project's error tree: every failure that reaches a user is one of these.

    WinAutomationError                 exit 1  the operation ran and failed or was refused
    ├── ConfigError                    exit 2  bad configuration (file, environment, value)
    │   └── VersionMismatch            exit 2  the Playwright server's major.minor is not the client's
    ├── UsageError                     exit 2  a bad argument (an invalid job id, say)
    ├── NotFoundError                  exit 1  a job, file or run that does not exist
    │   └── NoArtifacts                exit 66 a job has no artifact folder (or no manifest) here
    ├── ConnectError         transient exit 3  the VM or a service could not be reached
    │   └── NoAnswer                   exit 3  a service took a request and did not answer in time
    │                                          (not retried: it may have acted on it)
    ├── AuthError                      exit 4  credentials were refused (never retried)
    ├── HostKeyError                   exit 5  unknown or changed host key (never retried)
    ├── OperationTimeout     transient exit 124 a deadline passed (the remote work was stopped)
    ├── CommandFailed               exit 1-255 a remote command ran and failed; carries its result
    │                                          and exits with the command's code (see command_result)
    ├── Skipped                        exit 0  a step had nothing to do (its result says why)
    ├── IllegalTransition              exit 1  a job/step state change the state machine forbids
    ├── ArtifactMismatch               exit 1  an artifact's size or sha256 differs from its manifest
    ├── DesktopUnavailable             exit 1  a GUI job cannot start: the VM desktop is locked or
    │                                          nobody is logged on (operations.desktop)
    ├── ServiceRefused                 exit 1  a service answered, but not with what was asked
    │                                          (an Aloha 4xx/500, a 409 busy desktop, a body that
    │                                          is not JSON)
    ├── HealthCheckFailed              exit 1  a supervisor pass ended with a failed check
    ├── BreakerOpen                    exit 75 the supervisor's circuit breaker is open: checks
    │                                          failed and nothing was repaired (EX_TEMPFAIL)
    ├── StorageError                   exit 74 a local file or folder cannot be used: a corrupt
    │                                          journal, an unwritable data.dir or --out folder
    │   ├── StorageFull      transient exit 74 no space (or quota, or an I/O error) on the way to
    │   │                                      a local file: a retry may find room again
    │   └── JournalError               exit 74 the journal cannot be read or written: corrupt,
    │       │                                  on a full or read-only disk (jobs.connection)
    │       └── JournalBusy            exit 74 another process held the journal locked past the
    │                                          busy timeout
    └── Cancelled                      exit 130 the job or command was cancelled (or interrupted)
        └── Superseded                 exit 130 another process took the job over (resumed it
                                               after this owner stopped heart-beating)

`transient` says whether a retry may help. `exit_code` is what the CLI exits with.
Outside exceptions are translated into these once, in the adapter that meets them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class WinAutomationError(Exception):
    """Root of all project errors; `str(err)` is the one-line message shown to users."""

    exit_code: int = 1
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, result: Any = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result
        if exit_code is not None:  # e.g. CommandFailed: the remote command's own code
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(WinAutomationError):
    exit_code = 2


class VersionMismatch(ConfigError):
    """The Playwright server refused this client (HTTP 428): their major.minor versions differ."""

    def __init__(self, message: str, *, client: str, server: str) -> None:
        super().__init__(message)
        self.client = client
        self.server = server


class UsageError(WinAutomationError):
    exit_code = 2


class NotFoundError(WinAutomationError):
    exit_code = 1


class NoArtifacts(NotFoundError):
    """The job's artifact folder (or its manifest) does not exist on this host: nothing to check,
    which is not the same as a file that does not match (ArtifactMismatch, exit 1)."""

    exit_code = 66  # sysexits EX_NOINPUT


class StorageError(WinAutomationError):
    """A local file or folder the command needs cannot be used (corrupt, read-only, not a folder)."""

    exit_code = 74  # sysexits EX_IOERR


class StorageFull(StorageError):
    """No space, a quota or an I/O error while writing a local file: retried (space may free)."""

    transient = True


class JournalError(StorageError):
    """The journal itself failed (corrupt, a full or read-only disk): the engine's fault, never a
    step's; a job whose change it could not record is left to the next Journal.open to mark
    interrupted."""


class JournalBusy(JournalError):
    """Another process kept the journal locked past the busy timeout: nothing was written."""


class ConnectError(WinAutomationError):
    exit_code = 3
    transient = True


class NoAnswer(ConnectError):
    transient = False


class AuthError(WinAutomationError):
    exit_code = 4


class HostKeyError(WinAutomationError):
    exit_code = 5


class OperationTimeout(WinAutomationError):
    exit_code = 124
    transient = True


class CommandFailed(WinAutomationError):
    exit_code = 1


class IllegalTransition(WinAutomationError):
    exit_code = 1


class ArtifactMismatch(WinAutomationError):
    exit_code = 1


class DesktopUnavailable(WinAutomationError):
    exit_code = 1


class ServiceRefused(WinAutomationError):
    exit_code = 1


class HealthCheckFailed(WinAutomationError):
    exit_code = 1


class BreakerOpen(WinAutomationError):
    exit_code = 75


class Skipped(WinAutomationError):
    """Raised by a step that had nothing to do (an idempotency check passed); `result` is its output.

    The engine records the step, and the job when nothing failed, as `skipped`.
    """

    exit_code = 0


class Cancelled(WinAutomationError):
    exit_code = 130


class Superseded(Cancelled):
    """This process no longer owns the job (its epoch was superseded): it records nothing more."""


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the operation ran and failed, or was refused (a failed job, a missing job or file)",
    2: "usage or configuration error (bad option, bad config file or environment value, bad job id)",
    3: "the VM or a service could not be reached (after retries)",
    4: "authentication failed (never retried)",
    5: "the host key is unknown or has changed (trust it with `win-automation ssh trust`)",
    66: "no artifacts: the job has no artifact folder or manifest on this host",
    74: "a local file or folder cannot be used (corrupt journal, unwritable data.dir or --out)",
    75: "`supervisor run --once`: the circuit breaker is open (checks failed, nothing repaired; retry later)",
    124: "a deadline passed; the remote work was stopped",
    255: "`ssh run`/`ssh script`: the remote exit code was outside 0-255 (see SSH, exit codes)",
    130: "cancelled or interrupted (Ctrl-C, `jobs cancel`)",
}
