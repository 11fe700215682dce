"""PowerShell as it must be sent to Windows over SSH, and its output read back (pure functions).

- `wrap_script` puts the user's script between the preamble (no progress records, stop on errors,
  UTF-8 console output) and the trailer that turns failed statements and `$LASTEXITCODE` into the
  process exit code. Arguments are passed as single-quoted literals.
- `encoded_command_line` sends a script as `-EncodedCommand` (base64 of UTF-16LE: no shell
  metacharacter survives to cmd.exe or PowerShell as default shell); `needs_upload` says when the
  command line would be too long (`MAX_COMMAND_LINE`), and the script goes over SFTP and runs
  with `file_command_line` instead.
- `strip_clixml` turns PowerShell's serialized error stream back into text; `decode_output`
  decodes remote bytes as UTF-8, then UTF-16LE (when NUL bytes show it), then the OEM code page.
- `kill_tree_script` is what stops a timed-out command's process tree on Windows (a warm
  session's is stopped by its PID: win_automation.operations.ssh.session_spec).
- `session_launch` and `session_bootstrap` start a warm PowerShell session (ssh.warm_powershell):
  `powershell.exe ... -Command -` reads its stdin line by line (-EncodedCommand would wait for
  the end of stdin), and its first line runs the session server (scripts/windows/
  Start-WarmPowerShell.ps1), which then runs each wrapped script it is sent.
"""

from __future__ import annotations

import base64
import html
import re

POWERSHELL = "powershell.exe"
POWERSHELL_FLAGS = "-NoProfile -NonInteractive -ExecutionPolicy Bypass"

# cmd.exe refuses command lines longer than 8191 characters; stay clear of it.
MAX_COMMAND_LINE = 8000

BEGIN_MARKER = "# >>> win-automation script"
END_MARKER = "# <<< win-automation script"

PREAMBLE = (
    "$ProgressPreference='SilentlyContinue'; $ErrorActionPreference='Stop'\n"
    "[Console]::OutputEncoding=[System.Text.UTF8Encoding]::new($false); "
    "$OutputEncoding=[Console]::OutputEncoding\n"
    "$global:LASTEXITCODE=0\n"
)

TRAILER = (
    "} catch {\n"
    "  [Console]::Error.WriteLine(($_ | Out-String).TrimEnd())\n"
    "  exit 1\n"
    "}\n"
    "if ($global:LASTEXITCODE -is [int] -and $global:LASTEXITCODE -ne 0) { exit $global:LASTEXITCODE }\n"
    "exit 0\n"
)

# PowerShell treats these as single quotes too; inside a literal each is escaped by doubling it.
_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def quote_literal(value: str) -> str:
    """`value` as a PowerShell single-quoted string literal (no expansion of `$`, backtick, ...)."""
    return "'" + "".join(c * 2 if c in _SINGLE_QUOTES else c for c in value) + "'"


def wrap_script(body: str, args: tuple[str, ...] | list[str] = (), run_id: str = "") -> str:
    """The script that runs on the VM: run-id line, preamble, `body` (with `args`), trailer.

    `body` runs in a script block, so a `param(...)` block at its top receives `args`; `exit N`
    in it ends the process with N. The first line names `run_id`, which makes the start of the
    encoded command unique (see `encoded_needle`).
    """
    arguments = "".join(" " + quote_literal(a) for a in args)
    return (
        f"# win-automation run {run_id}\n{PREAMBLE}"
        f"try {{\n& {{\n{BEGIN_MARKER}\n{body}\n{END_MARKER}\n}}{arguments}\n{TRAILER}"
    )


SESSION_FLAGS = "-NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command -"


def session_launch(posix: bool = False) -> str:
    """The command line of a warm session's process. On a posix sshd (the tests' stand-in) it
    replaces the login shell (`exec`), so its PID is the session leader that `pkill -s` kills."""
    return f"{'exec ' if posix else ''}{POWERSHELL} {SESSION_FLAGS}"


def session_bootstrap(server: str) -> str:
    """The one line that runs the session server `server` (its text) in `-Command -` mode."""
    encoded = base64.b64encode(server.encode("utf-8")).decode("ascii")
    return (
        "& ([scriptblock]::Create([Text.Encoding]::UTF8.GetString("
        f"[Convert]::FromBase64String('{encoded}'))))"
    )


def encoded_needle(script: str) -> str:
    """The start of `encode(script)` that encodes the script's whole first line (its run id)."""
    first_line = script.split("\n", 1)[0] + "\n"
    whole_groups = len(first_line.encode("utf-16-le")) // 3
    return encode(script)[: whole_groups * 4]


def encode(script: str) -> str:
    """Base64 of the UTF-16LE bytes of `script`: the argument of `-EncodedCommand`."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def decode(encoded: str) -> str:
    """The inverse of `encode`."""
    return base64.b64decode(encoded, validate=True).decode("utf-16-le")


def encoded_command_line(script: str) -> str:
    return f"{POWERSHELL} {POWERSHELL_FLAGS} -EncodedCommand {encode(script)}"


def needs_upload(script: str) -> bool:
    """True when the `-EncodedCommand` line would be too long: upload and use `-File`."""
    return len(encoded_command_line(script)) > MAX_COMMAND_LINE


MAX_SENT_COMMAND = 255 * 1024
"""The largest command `ssh run` sends as is (cmd mode on a posix sshd), in bytes: sshd resets the
connection on an exec request over its 256 KiB packet limit (measured: 262,044 bytes of command
ran, 262,144 were reset), which would look like a network fault; 1 KiB stays for the request's
framing and the PID marker. PowerShell (and Windows cmd mode, which goes through it) has no such
limit: a script too long for a command line is uploaded (`needs_upload`)."""


MAX_SCRIPT_BYTES = 32 * 1024 * 1024
"""The largest script `ssh script` runs: the job's input holds it (the journal keeps it) and each
warm path carries it whole, at about ten times its size in memory; more is refused up front."""


def file_command_line(path: str) -> str:
    """Run an uploaded script file. `path` must not hold a double quote (ours never does)."""
    if '"' in path:
        raise ValueError(f"script path {path!r} holds a double quote")
    return f'{POWERSHELL} {POWERSHELL_FLAGS} -File "{path}"'


_CLIXML_HEADER = "#< CLIXML"
_OBJS = re.compile(r"<Objs\b.*?</Objs>", re.DOTALL)
_ERROR_STRING = re.compile(r'<S S="Error">(.*?)</S>', re.DOTALL)
_XML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _unescape_clixml(text: str) -> str:
    text = _XML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), html.unescape(text))
    return text.replace("\r\n", "\n")


def strip_clixml(stderr: str) -> str:
    """PowerShell's `#< CLIXML` stderr as plain text: error strings kept, progress records dropped."""
    if _CLIXML_HEADER not in stderr:
        return stderr
    text = stderr.replace(_CLIXML_HEADER + "\r\n", "").replace(_CLIXML_HEADER + "\n", "")
    text = text.replace(_CLIXML_HEADER, "")

    def errors_only(match: re.Match[str]) -> str:
        return "".join(_unescape_clixml(s) for s in _ERROR_STRING.findall(match.group(0)))

    return _OBJS.sub(errors_only, text)


def decode_output(data: bytes, oem_codepage: str = "cp437") -> str:
    """Remote output as text: UTF-8, else UTF-16LE when NUL bytes show it, else the OEM code page."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        body = data[2:] if data.startswith(b"\xff\xfe") else data
        try:
            return body.decode("utf-16-le")
        except UnicodeDecodeError:
            pass
    return data.decode(oem_codepage, errors="replace")


def kill_tree_script(needle: str) -> str:
    """PowerShell that kills (taskkill /T /F) every process tree whose command line holds `needle`.

    The running command is found by a unique string in its command line (a prefix of its base64,
    its uploaded script's path); this script is itself sent
    encoded, so its own command line never matches.
    """
    return (
        f"$needle = {quote_literal(needle)}\n"
        "Get-CimInstance Win32_Process | Where-Object {\n"
        "  $_.ProcessId -ne $PID -and $_.CommandLine -and $_.CommandLine.Contains($needle)\n"
        "} | ForEach-Object { & taskkill.exe /T /F /PID $_.ProcessId 2>&1 | Out-Null }\n"
        "exit 0\n"
    )
