"""`playwright install` against the real test sshd: the wheel cache (from --wheel, or pip download,
refused offline with the command to run elsewhere), uploads over SFTP only when the VM's copy
differs, and the install script sent to the `powershell.exe` stand-in with its arguments, checked
for what arrived. The stand-in cannot run Windows' scheduled tasks, so it answers no result line:
that failure is asserted too. Real Windows runs are `-m vm`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from fixture_playwright import LAUNCH_SERVER, NODE
from fixture_sshd import SshServer

from win_automation.adapters.playwright import client_version
from win_automation.operations.playwright_install import InstallReport, _answer, check_wheel
from win_automation.operations.winscripts import SCRIPTS_DIR, script_text

VERSION = client_version()
PS1 = SCRIPTS_DIR / "Install-PlaywrightServer.ps1"


def make_wheel(folder: Path, version: str = VERSION, node: bool = True) -> Path:
    """A wheel laid out like playwright's win_amd64 wheel (metadata, driver/node.exe, package)."""
    path = folder / f"playwright-{version}-py3-none-win_amd64.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        info = f"playwright-{version}.dist-info"
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: playwright\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-win_amd64\n"
        )
        if node:
            wheel.writestr("playwright/driver/node.exe", b"MZ" + bytes(4096))
        wheel.writestr("playwright/driver/package/package.json", json.dumps({"version": version}))
        wheel.writestr("playwright/driver/package/cli.js", "// cli\n")
    return path


def flip_a_byte_of_node(wheel: Path) -> Path:
    """The wheel with one byte of node.exe's stored data changed (its directory still whole)."""
    with zipfile.ZipFile(wheel) as zf:
        offset = zf.getinfo("playwright/driver/node.exe").header_offset
    data = bytearray(wheel.read_bytes())
    at = data.index(b"MZ", offset)  # written uncompressed (ZIP_STORED): the file's first bytes
    data[at] ^= 0xFF
    wheel.write_bytes(bytes(data))
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_reports(server: SshServer) -> list[dict[str, object]]:
    lines = server.reports.read_text().splitlines()
    return [r for r in map(json.loads, lines) if "Install-PlaywrightServer" in str(r.get("body", ""))[:200]]


@pytest.fixture
def env(live_sshd: SshServer, known_hosts: Path, remote_dir: Path) -> dict[str, str]:
    return {
        **live_sshd.env(known_hosts),
        "WIN_AUTOMATION_PLAYWRIGHT_INSTALL_DIR": str(remote_dir / "playwright"),
    }


def arguments(report: dict[str, object]) -> list[str]:
    """The positional arguments the wrapper passed to the script block (single-quoted literals)."""
    tail = str(report["script"]).split("# <<< win-automation script\n}", 1)[1].split("\n", 1)[0]
    return [value.replace("''", "'") for value in re.findall(r"'((?:[^']|'')*)'", tail)]


def test_install_uploads_once_and_sends_the_script(
    cli, live_sshd: SshServer, env: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path)
    before = len(install_reports(live_sshd))  # the sshd (and its report file) serves the session
    run = cli("playwright", "install", "--wheel", str(wheel), env=env)
    assert run.code == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "error: Install-PlaywrightServer failed on the VM: exit code 0, no JSON result line"
    )
    folder = remote_dir / "playwright"
    assert sha256(folder / wheel.name) == sha256(wheel)
    assert (folder / "launch-server.js").read_bytes() == LAUNCH_SERVER.read_bytes()
    assert sha256(tmp_path / "data" / "playwright" / wheel.name) == sha256(wheel)  # cached on the host
    [report] = install_reports(live_sshd)[before:]
    assert report["body"] == script_text("Install-PlaywrightServer")
    assert arguments(report) == [
        str(folder),
        wheel.name,
        VERSION,
        "msedge",
        "true",
        "0.0.0.0",
        "9323",
        "ssh-client",
        "false",
        "true",
        "60",
    ]
    stamp = (folder / wheel.name).stat().st_mtime_ns

    again = cli("playwright", "install", "--headed", "--channel", "chromium", "--rotate-ws-path", env=env)
    assert again.code == 1
    assert (folder / wheel.name).stat().st_mtime_ns == stamp  # same sha256 on the VM: not uploaded
    second = install_reports(live_sshd)[-1]
    assert arguments(second)[3:] == [
        "chromium",
        "false",
        "0.0.0.0",
        "9323",
        "ssh-client",
        "true",
        "false",
        "60",
    ]


def test_install_through_the_ssh_forward_binds_loopback_and_opens_no_port(
    cli, live_sshd: SshServer, env: dict[str, str], tmp_path: Path
) -> None:
    run = cli(
        "playwright",
        "install",
        "--wheel",
        str(make_wheel(tmp_path)),
        "--allow-from",
        "10.0.2.2",
        env={**env, "WIN_AUTOMATION_SSH_FORWARD_SERVICES": "true"},
    )
    assert run.code == 1
    assert arguments(install_reports(live_sshd)[-1])[5:8] == ["127.0.0.1", "9323", ""]
    run = cli(
        "playwright", "install", "--wheel", str(make_wheel(tmp_path)), "--allow-from", "10.0.2.2", env=env
    )
    assert arguments(install_reports(live_sshd)[-1])[5:8] == ["0.0.0.0", "9323", "10.0.2.2"]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: (d / "x.whl").write_bytes(b"not a zip") or d / "x.whl", "not a readable wheel"),
        (lambda d: make_wheel(d, node=False), "holds no playwright/driver/node.exe: not the win_amd64 wheel"),
        (lambda d: make_wheel(d, version="1.40.0"), f"playwright 1.40.0, but this client is {VERSION}"),
        (lambda d: os.mkfifo(d / "f.whl") or d / "f.whl", "not a regular file (a FIFO)"),  # its open blocked
        (
            lambda d: flip_a_byte_of_node(make_wheel(d)),
            "not a readable wheel (bad CRC in playwright/driver/node.exe)",
        ),
    ],
)
def test_bad_wheels_are_refused_before_anything_is_sent(
    cli, live_sshd: SshServer, env: dict[str, str], remote_dir: Path, tmp_path: Path, make, needle: str
) -> None:  # type: ignore[no-untyped-def]
    before = len(install_reports(live_sshd))
    run = cli("playwright", "install", "--wheel", str(make(tmp_path)), env=env, timeout=30)
    assert run.code == 2
    last = run.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: --wheel ") and needle in last[0]
    if "client is" in needle or "holds no" in needle:
        assert "pip download --platform win_amd64 --only-binary=:all: --no-deps" in last[0]
    assert len(install_reports(live_sshd)) == before and not (remote_dir / "playwright").exists()


def test_offline_without_a_wheel_names_the_pip_command(cli, env: dict[str, str], remote_dir: Path) -> None:
    run = cli(
        "playwright",
        "install",
        env={**env, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"},
        timeout=120,
    )
    assert run.code == 1
    last = run.stderr.strip().splitlines()[-1]
    assert f"cannot download the win_amd64 wheel of playwright {VERSION}" in last
    assert "`pip download --platform win_amd64 --only-binary=:all: --no-deps --dest" in last
    assert f"playwright=={VERSION}` and pass the file with --wheel PATH" in last
    assert not (remote_dir / "playwright").exists()


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_damaged_cached_wheel_is_fetched_again(
    cli, env: dict[str, str], remote_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A cached wheel cut short (a download or copy stopped by a full disk, a Ctrl-C) was refused
    on every later run ("cached wheel ...: not a readable wheel"), with no way out but finding
    and deleting it. It is a cache: it is now removed and downloaded again (here from a local
    index), into a temporary folder first, so that a cut download leaves nothing behind."""
    (tmp_path / "index").mkdir()
    source = make_wheel(tmp_path / "index")
    cache = tmp_path / "data" / "playwright"
    cache.mkdir(parents=True)
    damaged = cache / source.name
    damaged.write_bytes(source.read_bytes())
    cut_in_half(damaged)
    index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(source.parent)}
    run = cli("playwright", "install", env={**env, **index}, timeout=120)
    assert "cached wheel damaged; fetching it again" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: Install-PlaywrightServer failed on the VM: exit code 0, no JSON result line"
    )  # the stand-in's answer: everything before it went through
    assert sha256(damaged) == sha256(source) == sha256(remote_dir / "playwright" / source.name)
    assert sorted(p.name for p in cache.iterdir()) == [source.name]  # no temporary folder left

    cut_in_half(damaged)
    offline = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    run = cli("playwright", "install", env={**env, **offline}, timeout=120)
    assert run.code == 1
    last = run.stderr.strip().splitlines()[-1]
    assert f"cannot download the win_amd64 wheel of playwright {VERSION} (the cached one was damaged" in last
    assert "and pass the file with --wheel PATH" in last
    assert list(cache.iterdir()) == []  # not taken again by the next run


def test_bad_channel(cli, env: dict[str, str]) -> None:
    run = cli("playwright", "install", "--channel", "firefox", env=env)
    assert run.code == 2 and "--channel: must be msedge or chromium, got 'firefox'" in run.stderr


def test_check_wheel_reads_the_version(tmp_path: Path) -> None:
    assert check_wheel(make_wheel(tmp_path), VERSION) == VERSION


def test_the_result_line_and_a_report_without_the_ws_path() -> None:
    line = json.dumps({"changed": [], "ws_path": "s3cr3t-ws-path-value", "task_state": "Running"})
    assert _answer("noise\n" + line + "\n") == json.loads(line)
    assert _answer("Write-Output 'x'\n} | ConvertTo-Json -Compress\n") is None
    report = InstallReport(VERSION, "msedge", True, "C:/x", changed=[], task_state="Running")
    assert report.as_dict()["unchanged"] is True and "ws_path" not in json.dumps(report.as_dict()).replace(
        "ws_path_new", ""
    )


def test_the_windows_scripts_hold_together() -> None:
    """launch-server.js parses (node --check); the .ps1's param() block takes the host's 11
    positional arguments in order, its braces balance, and no line would make the test stand-in
    exit early (a bare `exit N`, `Start-Sleep N` or `Write-Error '...'`)."""
    subprocess.run([str(NODE), "--check", str(LAUNCH_SERVER)], check=True)
    text = PS1.read_text(encoding="utf-8")
    block = text[text.index("param(") : text.index("\n)\n")]
    names = re.findall(r"\$(\w+)(?:\s*=|\s*,|\s*$|\s*#)", block, re.M)
    assert names == [
        "Dir",
        "Wheel",
        "Version",
        "Channel",
        "Headless",
        "BindHost",
        "Port",
        "AllowFrom",
        "Rotate",
        "Restart",
        "WaitSeconds",
    ]
    code = re.sub(r"'[^']*'|\"[^\"]*\"|#.*", "", text)
    assert code.count("{") == code.count("}") and code.count("(") == code.count(")")
    for line in text.splitlines():
        assert not re.fullmatch(
            r"\s*(exit\s+-?\d+|Start-Sleep\s+(-Seconds\s+)?[\d.]+|Write-Error\s+'[^']*')\s*", line
        )
