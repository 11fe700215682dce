"""The VM's scripts (scripts/windows/*.ps1): a real PowerShell parser (tree-sitter's grammar, see
tests/ps_syntax.py) accepts each file, each script as the Python side wraps it, and each script as
it arrives through the sshd's powershell.exe stand-in; a non-editable install still finds them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_sshd import SshServer
from ps_syntax import node_types, syntax_errors

from win_automation.adapters import ssh
from win_automation.config import Config
from win_automation.errors import CommandFailed, ConfigError
from win_automation.operations import powershell, transfers
from win_automation.operations.vm import Vm
from win_automation.operations.winscripts import SCRIPTS_DIR, script_text

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "scripts" / "windows").glob("*.ps1"))

VALID = {
    "param block with attributes": "param([Parameter(Mandatory = $true)][string]$Name, [int]$N = 3)\n$Name",
    "here-string": "$x = @'\nit's $literal\n'@\nWrite-Output $x\n",
    "splatting": "$p = @{ Path = 'C:\\x'; Force = $true }\nRemove-Item @p\n",
    "backtick continuation": "Get-ChildItem `\n  -Force `\n  -Recurse\n",
    "try catch finally": "try { throw 'x' } catch [System.IO.IOException] { 1 } catch { 2 } finally { 3 }\n",
    "pipeline and script block": "Get-Process | Where-Object { $_.Id -gt 4 } | ForEach-Object { $_.Name }\n",
    "advanced function": "function Set-X {\n  [CmdletBinding(SupportsShouldProcess = $true)]\n  param()\n"
    "  if ($PSCmdlet.ShouldProcess('x')) { 1 }\n}\n",
    "static members and casts": "[Security.Principal.SecurityIdentifier]'S-1-5-18'; [Math]::Min(1, 2)\n",
    "format operator": "'{0,-13}{1}' -f 'a', 'b'\n",
}
INVALID = {
    "unclosed brace": ("function f {\n  Write-Output 1\n", None),
    "stray closing brace": ("Write-Output 1 }\n", "1:16"),
    "unclosed string": ("Write-Output 'abc\n", None),
    "unclosed here-string": ("$x = @'\nhello\n", None),
    "param without its parenthesis": ("param([string]$a\nWrite-Output 1\n", None),
    "if without condition": ("if { 1 }\n", "1:1"),
    "dangling pipe": ("Get-Item |\n", None),
    "dangling operator": ("$a = 1 +\n", None),
    "hashtable entry without value": ("$h = @{ a = }\n", None),
    "foreach without in": ("foreach ($x) { }\n", None),
    "function without body": ("function f\n", None),
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_the_parser_accepts_valid_powershell(text: str) -> None:
    assert syntax_errors(text) == []


@pytest.mark.parametrize(("text", "where"), INVALID.values(), ids=INVALID.keys())
def test_the_parser_rejects_invalid_powershell(text: str, where: str | None) -> None:
    problems = syntax_errors(text)
    assert problems
    if where is not None:
        assert problems[0].startswith(f"{where}:"), problems


def test_a_broken_copy_of_a_real_script_is_caught_at_its_line() -> None:
    lines = script_text("Set-FirewallRules").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("foreach"))
    lines[index] = lines[index].replace("{", "")
    assert syntax_errors("\n".join(lines))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_parses_is_ascii_and_says_what_it_is(name: str) -> None:
    raw = (ROOT / "scripts" / "windows" / f"{name}.ps1").read_bytes()
    # Windows PowerShell 5.1 reads a .ps1 without BOM in the ANSI code page: keep them ASCII.
    assert raw.isascii(), f"{name}.ps1 holds non-ASCII bytes"
    text = raw.decode("ascii")
    assert syntax_errors(text) == [], name
    assert text.startswith("# "), f"{name}.ps1 must begin with a comment saying what it does"
    assert "param_block" in node_types(text), f"{name}.ps1 needs a param() block"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_parses_as_the_python_side_wraps_it(name: str) -> None:
    wrapped = powershell.wrap_script(script_text(name), ("it's", "C:\\x y", "$(boom)"), run_id="abc")
    assert syntax_errors(wrapped) == []
    assert syntax_errors(powershell.kill_tree_script("WA_RUN=1'2")) == []


def test_script_text_reads_the_one_source() -> None:
    assert SCRIPTS_DIR.resolve() == (ROOT / "scripts" / "windows").resolve()
    assert script_text("Set-FirewallRules") == (ROOT / "scripts/windows/Set-FirewallRules.ps1").read_text()
    with pytest.raises(ConfigError, match=r"cannot read the VM script .*No-Such-Script\.ps1"):
        script_text("No-Such-Script")


def test_install_script_calls_the_firewall_script_instead_of_copying_it() -> None:
    text = script_text("Install-WinAutomation")
    assert "Set-FirewallRules.ps1" in text
    assert "New-NetFirewallRule" not in text and "Set-NetFirewallRule" not in text
    assert "*S-1-5-32-544" not in text or "S-1-5-18" in text  # SIDs, never localized names
    assert "'S-1-5-32-544'" in text and "'S-1-5-18'" in text
    assert "SupportsShouldProcess = $true" in text and "[switch]$EnableAutologon" in text


@pytest.fixture
def _fresh_pool() -> Iterator[None]:
    ssh.close_all()
    yield
    ssh.close_all()


def _reports(server: SshServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.reports.read_text().splitlines() if line]


@pytest.mark.usefixtures("_fresh_pool")
def test_what_arrives_at_the_vm_parses(live_sshd: SshServer, ssh_config) -> None:  # type: ignore[no-untyped-def]
    vm = Vm(Config(ssh=ssh_config))
    earlier = len(_reports(live_sshd))  # the file is shared by the session's tests
    for name in SCRIPTS:
        vm.powershell(script_text(name), args=("-RemoteAddress", "10.0.2.2"), live=False)
        report = _reports(live_sshd)[-1]
        assert report["body"] == script_text(name)
        assert syntax_errors(str(report["script"])) == [], name
    assert {r["mode"] for r in _reports(live_sshd)[earlier:]} == {"encoded", "file"}  # long ones by SFTP
    windows = ssh_config.model_copy(update={"remote_os": "windows"})
    with pytest.raises(CommandFailed):  # the stand-in echoes instead of hashing; what arrived counts
        transfers.remote_sha256(ssh.get_connection(windows), "C:/it's here.bin", "windows")
    hashing = _reports(live_sshd)[-1]
    assert "Get-FileHash" in str(hashing["script"]) and syntax_errors(str(hashing["script"])) == []


@pytest.mark.slow
def test_a_non_editable_install_reads_the_scripts(tmp_path: Path) -> None:
    """A built wheel carries scripts/windows (package data through the win_automation/windows
    symlink); installed apart from the source tree, script_text reads them from the package."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    target = tmp_path / "site"
    (wheel,) = wheels.glob("win_automation-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import json, win_automation.operations.winscripts as w;"
        "print(json.dumps({'dir': str(w.SCRIPTS_DIR), 'text': w.script_text('Install-WinAutomation'),"
        " 'js': (w.SCRIPTS_DIR / 'launch-server.js').is_file()}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    assert out["dir"].startswith(str(target)) and not Path(out["dir"]).is_symlink()
    assert out["text"] == script_text("Install-WinAutomation") and out["js"]
