"""A real OpenSSH server on loopback for the tests (and the SSH benchmark), reusable by any helper.

`SshServer` runs Debian's `/usr/sbin/sshd -D -e -f <own config>` on 127.0.0.1 and a free port with
its own host key, authorized_keys and a `powershell.exe` stand-in first on the login's PATH. As
root, the login is the unprivileged user `wa-sshtest` (created idempotently, shell `/bin/sh`, an
empty home: no `.bashrc` cost per command) with the password `SshServer.PASSWORD`; otherwise it is
the current user.

Pytest fixtures (registered in tests/conftest.py through `pytest_plugins`):

- `sshd` (session): the running `SshServer`; `sshd.config(known_hosts=...)` gives an `SSHConfig`
  that trusts it, `sshd.remote_dir` a folder the login may write (cleared for each test by
  `remote_dir`), `sshd.stop()`/`sshd.start()`/`sshd.drop_sessions()` for fault tests.
- `ssh_config`: an `SSHConfig` for `sshd` with `remote_os="posix"` and a fresh known-hosts file
  that holds its host key; `remote_dir`: an empty remote folder for one test.

The stand-in decodes `-EncodedCommand` (or reads `-File`), writes the user's script body (between
the wrapper's markers) to stdout as UTF-8, appends a JSON report of what arrived to
`<server dir>/powershell-reports.jsonl`, and acts on a few lines of the body: `exit N`,
`Start-Sleep N`, `Write-Error 'text'` (a CLIXML error record on stderr, as real PowerShell does)
and cmd mode's `& cmd.exe /d /s /c '...'` (run by /bin/sh, its exit code the script's, stdin NUL).
Variables are scoped to one script: `$x = 'v'` (also `$global:x`) then `Write-Output $x` prints
`v` in the same script and an empty line in any other; `$env:X = 'v'` / `Write-Output $env:X`.
Started as `powershell.exe ... -Command -` with the warm session server
(scripts/windows/Start-WarmPowerShell.ps1) as its first stdin line, it serves that protocol:
one script per stdin line, each run as above in a scope of its own, `exit N` ending the script
and not the session, the end markers after each, the environment put back (reports with mode
`session-start` and `session`, and the session's `pid`).
Given Set-FirewallRules.ps1 (a body with its rule table) it keeps the VM's inbound rules in
`sshd.firewall_file` (JSON keyed by -Name): it reads the rule table and parameters from the script
and its arguments, creates, updates or leaves each rule and prints the script's JSON line per
rule; a rule created without `-Name $rule.Name` is stored under a GUID, as Windows does, so a
second run duplicates it. The line `Write-Output ([DateTime]::UtcNow.ToString('o'))` prints the
time as .NET does.
Given exactly the desktop probe (scripts/windows/Get-DesktopState.ps1, checked by its sha256) it
prints the probe's JSON line for the state the test set (`sshd.set_desktop("locked")`, or the
`desktop` fixture; `unlocked` by default) instead of the body.
Given the Windows kill script (win_automation.powershell.kill_tree_script), it does what taskkill
/T /F would: kills every process whose command line holds the needle, with its descendants. The
same program is `taskkill.exe` on that PATH: `taskkill.exe /T /F /PID PID` (how a warm session's
tree is killed) kills the process PID and its descendants.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"
# One login per pytest-xdist worker: the stand-in's processes (found by `pgrep -u`) and the scripts
# left in the login's home belong to one worker's tests.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
TEST_USER = f"wa-sshtest-{WORKER}" if WORKER else "wa-sshtest"
LOGIN = TEST_USER if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name  # who sshd lets in

STANDIN = r'''#!/usr/bin/python3
"""powershell.exe stand-in: report what arrived, echo the user's script body, obey a few lines."""
import base64, hashlib, json, os, re, sys, time
REPORTS = __REPORTS__
DESKTOP_FILE, DESKTOP_PROBE_SHA256 = __DESKTOP__
FIREWALL_FILE = __FIREWALL__
USER = "WIN11\\tester"
DESKTOPS = {  # what scripts/windows/Get-DesktopState.ps1 prints in each state
    "unlocked": {"state": "unlocked", "session": 1, "user": USER, "logonui": False, "explorer": True},
    "locked": {"state": "locked", "session": 1, "user": USER, "logonui": True, "explorer": True},
    "no-user": {"state": "no-user", "session": 1, "user": None, "logonui": True, "explorer": False},
}
def kill_trees(matches):
    """What taskkill /T /F does: kill the processes `matches(pid, cmdline)` picks, with their descendants."""
    import signal
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            procs[int(entry)] = (ppid, cmdline)
    mine = {os.getpid(), os.getppid()}
    doomed = {pid for pid, (_, cmd) in procs.items() if matches(pid, cmd) and pid not in mine}
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        if not more:
            break
        doomed |= more
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return sorted(doomed)


def write_report(report):
    with open(REPORTS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(report) + "\n")


def run(script, report):
    """Act on one script as powershell.exe would run it; returns its exit code. Variables live in
    a scope of this script only (as in a process, or a warm session's runspace, of its own)."""
    if "taskkill.exe /T /F" in script:  # the Windows kill script: emulate it with /proc
        needle = re.search(r"\$needle = '((?:[^']|'')*)'", script).group(1).replace("''", "'")
        killed = kill_trees(lambda _, cmd: needle in cmd)
        write_report({**report, "mode": "kill", "needle": needle, "killed": killed})
        return 0
    begin, end = "# >>> win-automation script\n", "\n# <<< win-automation script"
    body = script.split(begin, 1)[1].split(end, 1)[0] if begin in script else script
    report["script"] = script
    report["body"] = body
    probe = hashlib.sha256(body.encode("utf-8")).hexdigest() == DESKTOP_PROBE_SHA256
    if probe:  # exactly the desktop probe arrived: answer as the VM's desktop is set by the test
        state = open(DESKTOP_FILE).read().strip() if os.path.exists(DESKTOP_FILE) else "unlocked"
        report["desktop"] = state
    write_report(report)
    if probe:
        print(json.dumps(DESKTOPS[state]) if state in DESKTOPS else state, flush=True)
        return 0
    FIREWALL_TABLE = r"@\{ Name = '([^']+)'; DisplayName = '([^']+)'; Port = \$(\w+) \}"
    if re.search(FIREWALL_TABLE, body):  # Set-FirewallRules.ps1 (its rule table): rules in FIREWALL_FILE
        tail = script.split(end, 1)[1] if end in script else ""
        given = [a.replace("''", "'") for a in re.findall(r"'((?:[^']|'')*)'", tail.split("\n", 2)[1])]
        params = re.findall(r"\[(?:string|int)\]\$(\w+) = '?([^',\n]*)'?", body)
        values = {name: default for name, default in params}
        values.update(zip([name for name, _ in params], given))
        if values["RemoteAddress"] == "ssh-client":  # the script's own rule: the SSH client's address
            client = os.environ.get("SSH_CLIENT")
            values["RemoteAddress"] = client.split()[0] if client else "Any"
        rules = json.load(open(FIREWALL_FILE)) if os.path.getsize(FIREWALL_FILE) else {}
        named = re.search(r"New-NetFirewallRule -Name \$rule\.Name", body) is not None
        for name, display, var in re.findall(FIREWALL_TABLE, body):
            want = {"DisplayName": display, "Direction": "Inbound", "Protocol": "TCP",
                    "LocalPort": values[var], "RemoteAddress": values["RemoteAddress"], "Action": "Allow",
                    "Profile": "Any", "Enabled": "True"}
            if name not in rules:  # a rule created without -Name gets a GUID: the next run adds another
                rules[name if named else str(__import__("uuid").uuid4())] = want
                action = "created"
            elif rules[name] != want:
                rules[name] = want
                action = "updated"
            else:
                action = "unchanged"
            print(json.dumps({"firewall_rule": name, "action": action, "port": int(values[var]),
                              "remote_address": values["RemoteAddress"]}), flush=True)
        with open(FIREWALL_FILE, "w") as fh:
            json.dump(rules, fh)
        return 0
    sys.stdout.buffer.write(body.encode("utf-8"))
    sys.stdout.flush()
    code = 0
    scope = {}
    for line in body.splitlines():
        if m := re.fullmatch(r"\s*Start-Sleep\s+(?:-Seconds\s+)?([\d.]+)\s*", line):
            time.sleep(float(m.group(1)))
        elif m := re.fullmatch(r"\s*Write-Error\s+'([^']*)'\s*", line):
            sys.stderr.write('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/'
                             'powershell/2004/04"><S S="Error">' + m.group(1) + '_x000D__x000A_</S></Objs>')
            sys.stderr.flush()
            code = 1
        elif line.strip() == "Write-Output ([DateTime]::UtcNow.ToString('o'))":  # .NET's round-trip format
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            print(stamp + f".{int(now % 1 * 1e7):07d}Z", flush=True)
        elif m := re.fullmatch(r"\s*& cmd\.exe /d /s /c '((?:[^']|'')*)'\s*", line):  # cmd mode: sh for cmd
            command = m.group(1).replace("''", "'")
            import subprocess
            code = subprocess.call(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL)
        elif m := re.fullmatch(r"\s*\$(?:global:|script:)?(\w+)\s*=\s*'([^']*)'\s*", line):
            scope[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"\s*\$env:(\w+)\s*=\s*'([^']*)'\s*", line):
            os.environ[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"\s*Write-Output\s+\$(?:global:)?(\w+)\s*", line):
            print(scope.get(m.group(1), ""), flush=True)
        elif m := re.fullmatch(r"\s*Write-Output\s+\$env:(\w+)\s*", line):
            print(os.environ.get(m.group(1), ""), flush=True)
        elif m := re.fullmatch(r"\s*exit\s+(-?\d+)\s*", line):
            code = int(m.group(1))
            break
    return code


def session(args):
    """A warm session (Start-WarmPowerShell.ps1 as the first line of `-Command -`): one script per
    stdin line, each run as `run` does, then the end markers; the environment is put back after
    each script, as the server does. A script that reads stdin gets NUL (cmd.exe's stdin)."""
    boot = sys.stdin.buffer.readline()
    m = re.search(rb"FromBase64String\('([A-Za-z0-9+/=]*)'\)", boot)
    server = base64.b64decode(m.group(1)).decode("utf-8") if m else ""
    if "wa-ready:" not in server or "[PowerShell]::Create()" not in server:
        sys.stderr.write("stand-in: the first line is not the warm session server\n")
        sys.exit(64)
    write_report({"argv": args, "mode": "session-start", "pid": os.getpid()})
    sys.stdout.buffer.write(b"\x1ewa-ready:%d\n" % os.getpid())
    sys.stdout.flush()
    base_env = dict(os.environ)
    while line := sys.stdin.buffer.readline():
        if not line.strip():  # the blank line after the bootstrap statement
            continue
        nonce, _, encoded = line.strip().partition(b" ")
        if not encoded:  # a ping
            sys.stdout.buffer.write(b"\x1ewa-pong:%s\n" % nonce)
            sys.stdout.flush()
            continue
        script = base64.b64decode(encoded).decode("utf-8")
        code = run(script, {"argv": args, "mode": "session", "pid": os.getpid()})
        os.environ.clear()
        os.environ.update(base_env)
        sys.stdout.flush()
        sys.stdout.buffer.write(b"\x1ewa-end:%s:%d\n" % (nonce, code))
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stderr.buffer.write(b"\x1ewa-end:%s\n" % nonce)
        sys.stderr.flush()
    sys.exit(0)


args = sys.argv[1:]
report = {"argv": args}
if os.path.basename(sys.argv[0]) == "taskkill.exe":  # taskkill.exe /T /F /PID N
    target = int(args[args.index("/PID") + 1])
    killed = kill_trees(lambda pid, _: pid == target)
    write_report({**report, "mode": "kill", "pid": target, "killed": killed})
    sys.exit(0)
if args[-2:] == ["-Command", "-"]:
    session(args)
if "-EncodedCommand" in args:
    script = base64.b64decode(args[args.index("-EncodedCommand") + 1]).decode("utf-16-le")
    report["mode"] = "encoded"
elif "-File" in args:
    i = args.index("-File")
    path = args[i + 1]
    with open(path, encoding="utf-8-sig") as fh:
        script = fh.read()
    report.update(mode="file", path=path, file_args=args[i + 2:])
else:
    sys.stderr.write("stand-in: neither -EncodedCommand nor -File\n")
    sys.exit(64)
sys.exit(run(script, report) & 0xFF)
'''


def _desktop_probe_sha256() -> str:
    from win_automation.operations.winscripts import script_text

    return hashlib.sha256(script_text("Get-DesktopState").encode("utf-8")).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class SshServer:
    """One sshd with its own directory, host key, client key, login and `powershell.exe` stand-in."""

    PASSWORD = "wa-test-Pa55word"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wa-sshd-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.is_root = os.geteuid() == 0
        self.user = LOGIN
        if self.is_root:
            self._ensure_user()
        self.home = Path(pwd.getpwnam(self.user).pw_dir)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        (self.dir / "authorized_keys").write_text(
            (self.client_key.with_suffix(".pub")).read_text(), encoding="ascii"
        )
        (self.dir / "authorized_keys").chmod(0o644)
        self.bin = self.dir / "bin"
        self.bin.mkdir(mode=0o755)
        self.reports = self.dir / "powershell-reports.jsonl"
        self.reports.touch(mode=0o666)
        self.reports.chmod(0o666)
        standin = self.bin / "powershell.exe"
        self.desktop_file = self.dir / "desktop-state"
        desktop = (str(self.desktop_file), _desktop_probe_sha256())
        self.firewall_file = self.dir / "firewall-rules.json"  # the VM's firewall rules, by -Name
        self.firewall_file.touch(mode=0o666)
        self.firewall_file.chmod(0o666)
        standin.write_text(
            STANDIN.replace("__REPORTS__", repr(str(self.reports)))
            .replace("__DESKTOP__", repr(desktop))
            .replace("__FIREWALL__", repr(str(self.firewall_file))),
            encoding="utf-8",
        )
        standin.chmod(0o755)
        (self.bin / "taskkill.exe").symlink_to("powershell.exe")
        self.remote_dir = self.dir / "remote"
        self.remote_dir.mkdir()
        self._own(self.remote_dir)
        self.log = self.dir / "sshd.log"
        self.config_file = self.dir / "sshd_config"
        self.config_file.write_text(self._sshd_config(), encoding="ascii")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _ensure_user(self) -> None:
        """Create the login (once per machine) and set its password. useradd and chpasswd lock
        /etc/passwd and /etc/shadow and fail at once when another worker holds them: take turns."""
        import fcntl

        home = Path("/var/lib") / TEST_USER
        with open("/tmp/wa-sshtest-users.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                pwd.getpwnam(TEST_USER)
            except KeyError:
                _run("useradd", "--system", "-M", "-d", str(home), "-s", "/bin/sh", TEST_USER)
            subprocess.run(["chpasswd"], input=f"{TEST_USER}:{self.PASSWORD}".encode(), check=True)
        home.mkdir(mode=0o755, exist_ok=True)
        self._own(home)

    def _own(self, path: Path) -> None:
        if self.is_root:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _sshd_config(self) -> str:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp",
            "AllowTcpForwarding local",  # adapters/tunnel.py: ssh -L to the VM's loopback
            f"SetEnv PATH={self.bin}:/usr/local/bin:/usr/bin:/bin",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "MaxSessions 200",
            "MaxStartups 100",
            "LogLevel ERROR",
        ]
        return "\n".join(lines) + "\n"

    # lifecycle ---------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config_file)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Stop the listener and every session: clients see the connection refused or dropped."""
        self.drop_sessions()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (the listener's descendants named sshd)."""
        if self.proc is None:
            return []
        found: list[int] = []
        parents = [self.proc.pid]
        while parents:
            out = subprocess.run(["pgrep", "-P", ",".join(map(str, parents))], capture_output=True, text=True)
            parents = [int(pid) for pid in out.stdout.split()]
            for pid in parents:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                        found.append(pid)
        return found

    @contextlib.contextmanager
    def sessions_paused(self) -> Iterator[list[int]]:
        """The per-connection sshd processes stopped (SIGSTOP: a VM paused, its TCP connections
        open, nothing answered) for the block, continued after it."""
        paused = self.session_pids()
        try:
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            yield paused
        finally:
            for pid in paused:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def drop_sessions(self) -> int:
        """Kill every connection's sshd process (SIGKILL): the clients' connections drop."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # client side -------------------------------------------------------------------------------
    def host_key_line(self) -> str:
        """The known-hosts line for this server (`[127.0.0.1]:PORT ssh-ed25519 AAAA...`)."""
        key_type, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {blob}\n"

    def fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key.with_suffix(".pub"))],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()[1]

    def write_known_hosts(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.host_key_line(), encoding="ascii")
        return path

    def settings(self, known_hosts: Path, **overrides: Any) -> dict[str, Any]:
        """The `ssh` config section for this server, as a dict (for SSHConfig or a config file)."""
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key_file": str(self.client_key),
            "use_agent": False,
            "known_hosts": str(known_hosts),
            "remote_os": "posix",
            "connect_timeout": 5,
        }
        values.update(overrides)
        return values

    def config(self, known_hosts: Path, **overrides: Any) -> Any:
        from win_automation.config.schema import SSHConfig

        return SSHConfig(**self.settings(known_hosts, **overrides))

    def env(self, known_hosts: Path, **overrides: Any) -> dict[str, str]:
        """WIN_AUTOMATION_SSH_* variables that point the CLI at this server."""
        return {
            f"WIN_AUTOMATION_SSH_{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in self.settings(known_hosts, **overrides).items()
        }

    def set_desktop(self, state: str) -> None:
        """What the desktop probe finds: `unlocked` (also when never set), `locked`, `no-user`, or
        any other text, printed as the probe's output line as it is."""
        self.desktop_file.write_text(state + "\n", encoding="utf-8")
        self.desktop_file.chmod(0o644)

    def clear_remote(self) -> Path:
        for child in self.remote_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        return self.remote_dir


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    server = SshServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def live_sshd(sshd: SshServer) -> SshServer:
    """`sshd`, restarted first if an earlier test stopped it."""
    if sshd.proc is None or sshd.proc.poll() is not None:
        sshd.start()
    return sshd


@pytest.fixture
def desktop(live_sshd: SshServer) -> Iterator[Any]:
    """`set(state)`: what the stand-in's desktop probe answers for this test (unlocked after it)."""
    yield live_sshd.set_desktop
    live_sshd.set_desktop("unlocked")


@pytest.fixture
def remote_dir(live_sshd: SshServer) -> Path:
    return live_sshd.clear_remote()


@pytest.fixture
def known_hosts(live_sshd: SshServer, tmp_path: Path) -> Path:
    return live_sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def ssh_config(live_sshd: SshServer, known_hosts: Path) -> Any:
    return live_sshd.config(known_hosts)


@pytest.fixture
def slow_to_hash(remote_dir: Path) -> Iterator[Path]:
    """A remote file the VM takes seconds to hash (2 GiB, sparse: reading its holes costs the
    kernel ~3 s), for tests of what happens to a hash whose transfer was abandoned. Whatever
    still hashes it is killed after the test: a Linux sshd does not end a command whose channel
    closed (Windows does), and it would burn a core. The shell goes with it: `openssl dgst`
    killed alone, it ran its fallback, `sha256sum` (15 s of CPU in a full run)."""
    path = remote_dir / "slow-to-hash.bin"
    with open(path, "wb") as out:
        out.truncate(2 << 30)
    yield path
    for _ in range(2):  # the second for a fallback started as the first round came
        subprocess.run(["pkill", "-KILL", "-f", re.escape(str(path))], check=False)


def hash_threads() -> list[str]:
    """The threads of this process that wait for a VM's hash (transfers' `remote-sha256`)."""
    import threading

    return [t.name for t in threading.enumerate() if t.name == "remote-sha256"]


def helper_logs(data_dir: Path, server: SshServer) -> str:
    """The helpers' logs and the sshd's, for a failure's message (a rare one, to diagnose)."""
    logs = [
        (log, log.read_text(errors="replace")[-6000:]) for log in (data_dir / "ssh-persist").glob("*.log")
    ]
    logs.append((server.log, server.log.read_text(errors="replace")[-3000:]))
    return "\n".join(f"--- {path}:\n{text}" for path, text in logs)
