"""The CLI shell as users meet it: a real process, exit codes, one-line errors, fast help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from win_automation import __version__
from win_automation.cli.app import app

HEAVY = ("hatchet_sdk", "playwright", "paramiko")


def commands() -> list[list[str]]:
    """Every command path in the CLI, e.g. ['config', 'show']."""
    import typer.main

    found: list[list[str]] = [[]]

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        for name, sub in getattr(cmd, "commands", {}).items():
            found.append([*path, name])
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_help_version_and_module_entry(cli) -> None:  # type: ignore[no-untyped-def]
    helped = cli("--help")
    assert helped.code == 0 and "config" in helped.stdout and "--config" in helped.stdout
    version = cli("--version")
    assert (version.code, version.stdout.strip()) == (0, f"win-automation {__version__}")


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("win-automation")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"win-automation {__version__}"


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "root")
def test_help_never_imports_heavy_libraries(path: list[str]) -> None:
    code = (  # the CLI ends with os._exit (win_automation.cli.finish), after the atexit handlers
        "import atexit, sys, runpy\n"
        f"sys.argv = ['win-automation', *{path!r}, '--help']\n"
        f"atexit.register(lambda: print([m for m in {HEAVY!r} if m in sys.modules]))\n"
        "runpy.run_module('win_automation', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "argv, built",
    [
        (["ssh", "run", "--", "x"], ["ssh"]),
        (["-v", "--config", "c.json", "--debug", "config", "show"], ["config"]),
        (["--config=c.json", "doctor"], ["doctor"]),
        (["--config", "ssh", "jobs"], ["jobs"]),  # --config takes the next word as its value
        (["--help"], None),
        (["--version"], None),
        (["bogus"], None),
        ([], None),
    ],
)
def test_a_call_builds_only_the_command_it_names(argv: list[str], built: list[str] | None) -> None:
    import typer.main

    from win_automation.cli.app import for_command

    names = sorted(typer.main.get_group(for_command(argv)).commands)
    assert names == (built or sorted(typer.main.get_group(app).commands))
    assert len(names) > 5 or built is not None


def test_root_options_still_apply_with_one_command_built(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "c.json").write_text('{"ssh": {"host": "10.9.8.7"}}')
    shown = cli("-v", "--config", "c.json", "config", "show", "--json")
    assert shown.code == 0
    settings = {s["key"]: s["value"] for s in json.loads(shown.stdout)["settings"]}
    assert settings["ssh.host"] == "10.9.8.7"
    unknown = cli("--debug", "bogus")
    assert unknown.code == 2 and "No such command 'bogus'" in unknown.stderr


def test_config_show_json_names_sources_and_masks_secrets(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"ssh": {"host": "vm.local"}, "hatchet": {"token": "file-token-xyz"}}))
    env = {
        "WIN_AUTOMATION_SSH_PORT": "2222",
        "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": "ws-path-xyz",
        "WIN_AUTOMATION_SSH_PASSWORD": "pw-xyz",
    }
    res = cli("--config", str(cfg), "--debug", "config", "show", "--json", env=env)
    assert res.code == 0, res.stderr
    settings = {s["key"]: (s["value"], s["source"]) for s in json.loads(res.stdout)["settings"]}
    assert settings["ssh.host"] == ("vm.local", "file")
    assert settings["ssh.port"] == (2222, "env")
    assert settings["ssh.user"] == ("administrator", "default")
    assert settings["hatchet.token"] == ("***", "file")
    assert settings["playwright.ws_path"] == ("***", "env")
    for secret in ("file-token-xyz", "ws-path-xyz", "pw-xyz"):
        assert secret not in res.stdout + res.stderr
    assert "op=load" in res.stderr  # the debug line was written, and holds no secret


def test_config_show_table_for_people(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("config", "show", env={"HATCHET_CLIENT_TOKEN": "tok-abc"})
    assert res.code == 0
    assert "ssh.port" in res.stdout and "22555" in res.stdout and "tok-abc" not in res.stdout


@pytest.mark.parametrize(
    ("content", "args_env", "message"),
    [
        ('{"ssh": {"port": 0}}', {}, "error: ssh.port must be between 1 and 65535, got 0"),
        ('{"ssh": {"hots": "x"}}', {}, "error: ssh.hots: unknown key (did you mean 'host'?)"),
        ('{"ssh": ', {}, "invalid JSON at line 1 column 9"),
        (
            "{}",
            {"WIN_AUTOMATION_SSH_PORT": "http"},
            "ssh.port (from WIN_AUTOMATION_SSH_PORT) must be an integer",
        ),
    ],
)
def test_bad_config_is_one_line_and_exit_2(cli, tmp_path: Path, content: str, args_env, message: str) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    for args in (["--config", str(cfg), "config", "show"], ["config", "validate", str(cfg)]):
        res = cli(*args, env=args_env)
        assert res.code == 2
        assert res.stderr.strip() == res.stderr.strip().splitlines()[0]
        assert message in res.stderr and "Traceback" not in res.stderr


def test_validate_good_file_and_missing_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text('{"ssh": {"host": "vm"}}')
    ok = cli("config", "validate", str(cfg))
    assert (ok.code, ok.stdout.strip()) == (0, f"{cfg}: valid")
    missing = cli("config", "validate", str(tmp_path / "nope.json"))
    assert missing.code == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["bogus"], "error: No such command 'bogus' (see 'win-automation --help')"),
        (["ssh", "persist", "stats"], "error: No such command 'stats'. Did you mean 'status'?"),
        (
            ["jobs", "list", "--bogus"],
            "error: No such option: --bogus (see 'win-automation jobs list --help')",
        ),
        (["jobs", "list", "--limit", "-5"], "error: Invalid value for '--limit': Input should be greater"),
        (["jobs", "show"], "error: Missing argument 'job_id' (see 'win-automation jobs show --help')"),
        (["config", "show", "extra"], "error: Got unexpected extra argument(s) (extra)"),
    ],
)
def test_a_usage_error_is_one_line_naming_it_exit_2(cli, args: list[str], said: str) -> None:  # type: ignore[no-untyped-def]
    """click's own errors (an unknown command or option, a missing argument, a value its type
    refuses) were four lines (usage, a hint, a blank line, `Error: ...`), unlike every other bad
    input: one line, as the rest, with where to look."""
    res = cli(*args)
    assert res.code == 2 and res.stdout == ""
    assert res.stderr.startswith(said) and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.rstrip().endswith("--help')")


def test_no_command_still_prints_the_help_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    for args in ([], ["ssh"]):
        res = cli(*args)
        assert res.code == 2 and res.stderr.startswith("Usage: win-automation") and "Commands:" in res.stderr


def test_usage_errors_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("config", "frobnicate")
    assert res.code == 2 and "No such command" in res.stderr
    res = cli("--config", "/nonexistent/x.json", "config", "show")
    assert res.code == 2 and "no such file" in res.stderr
