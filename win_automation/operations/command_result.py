"""What a remote command returns (`CommandResult`), and how its exit code maps to the CLI's.

Windows exit codes are 32-bit: SSH carries them unsigned (0xC0000005 arrives as 3221225477).
`CommandResult.exit_code` holds the signed 32-bit value Windows shows (`%ERRORLEVEL%`,
`$LASTEXITCODE`): -1073741819 for an access violation. A process exit code must fit 0-255, so
`cli_exit_code` passes 0-255 through and maps every other value (above 255 or negative) to 255;
the full value stays in `--json`, exit_code.txt and the error line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

TIMEOUT_EXIT_CODE = 124
CANCELLED_EXIT_CODE = 130
OUT_OF_RANGE_EXIT_CODE = 255

Shell = Literal["powershell", "cmd"]


def signed32(status: int) -> int:
    """An SSH exit status (unsigned 32-bit) as the signed value Windows reports."""
    status &= 0xFFFFFFFF
    return status - (1 << 32) if status >= 1 << 31 else status


def cli_exit_code(code: int) -> int:
    """The process exit code for a remote exit code: 0-255 as is, anything else 255."""
    return code if 0 <= code <= 255 else OUT_OF_RANGE_EXIT_CODE


def describe_exit_code(code: int) -> str:
    """`3`, or `-1073741819 (0xC0000005)` for a code outside 0-255."""
    return str(code) if 0 <= code <= 255 else f"{code} (0x{code & 0xFFFFFFFF:08X})"


class CommandResult(BaseModel):
    """One remote command's outcome. `exit_code` is 124 with `timed_out` when its deadline passed,
    130 with `cancelled` when its job was cancelled (the remote process tree was killed either way)."""

    command: str
    shell: str
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool = False
    skipped: bool = False
    cancelled: bool = False
    stdout_truncated: bool = False
    """`stdout` holds only the end of the output (the whole is in the file it was streamed to)."""
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled
