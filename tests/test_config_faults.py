"""Config faults a user meets: every bad file, value or environment variable is one line, exit 2,
never a traceback or a hang, and never echoes a secret."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import unprivileged

from win_automation.config import load_config
from win_automation.config.load import field_specs, secret_values
from win_automation.errors import ConfigError


def one_line_exit_2(res, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert res.code == 2, (res.code, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "Usage:" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


NESTED = "[" * 1100 + "]" * 1100
BIG_INT = "9" * 5000


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"ssh": {"connect_timeout": 1e400}}', "ssh.connect_timeout must be a duration of zero or more"),
        ('{"ssh": {"command_timeout": 1e300}}', "ssh.command_timeout must be at most 3650d"),
        ('{"supervisor": {"interval": "99999999999999999999999d"}}', "supervisor.interval must be at most"),
        ('{"ssh": {"keepalive_interval": ' + BIG_INT + "}}", "integer with more than 4300 digits"),
        ('{"ssh": {"port": ' + BIG_INT + "}}", "integer with more than 4300 digits"),
        ('{"artifacts": {"retention_days": 1e400}}', "artifacts.retention_days must be a finite number"),
        ('{"ssh": ' + NESTED + "}", "nested more than 200 levels deep"),
        ('{"a": "[[[", "ssh": ' + NESTED + "}", "nested more than 200 levels deep"),
        ('{"ssh\\nbad": {}}', "ssh\\nbad: unknown section"),
        ('{"ssh": {"ho\\u2028st": 1}}', "ssh.ho\\u2028st: unknown key"),
        ('{"aloha": {"server_url": "http://a\\u2028b/"}}', "aloha.server_url must be an http://"),
        ('{"aloha": {"client_url": "http://a\\nb/"}}', "aloha.client_url must be an http://"),
        ('{"hatchet": {"url": "http://h:99999/"}}', "hatchet.url must be an http://"),
        ('{"ssh": {"host": "vm\\u200b.local"}}', "ssh.host must be a host name"),
        ('{"hatchet": {"host_port": "engine\\u2028:7077"}}', "hatchet.host_port must be HOST:PORT"),
        ('{"hatchet": {"host_port": "engine:\\u0667\\u0660\\u0667\\u0667"}}', "hatchet.host_port must be"),
        # a section or setting written twice (a merge): the first was dropped without a word
        ('{"ssh": {"port": 22}, "ssh": {"host": "vm"}}', "the key 'ssh' appears twice in one object"),
        ('{"ssh": {"port": 22, "port": 23}}', "the key 'port' appears twice in one object"),
        # true was 1 day (prune --dry-run listed 3-day-old folders); past 100 years a traceback
        ('{"artifacts": {"retention_days": true}}', "artifacts.retention_days must be an integer, got true"),
        ('{"ssh": {"port": true}}', "ssh.port must be an integer, got true"),
        ('{"supervisor": {"breaker_threshold": false}}', "supervisor.breaker_threshold must be an integer"),
        ('{"artifacts": {"retention_days": 1000000}}', "artifacts.retention_days must be at most 36500"),
        ('{"data": {"journal_retention_days": 99999999999999999999}}', "must be at most 36500"),
        # a NUL in any setting: `embedded null byte` tracebacks from the job commands
        ('{"ssh": {"known_hosts": "/tmp/\\u0000x"}}', "ssh.known_hosts must not contain a NUL character"),
        ('{"ssh": {"user": "admin\\u0000"}}', "ssh.user must not contain a NUL character"),
        # an empty path was `.`: data.dir "" made the journal in whatever folder the command ran in
        ('{"ssh": {"key_file": ""}}', "ssh.key_file must be a path, got an empty string"),
        ('{"metrics": {"path": " "}}', "metrics.path must be a path, got an empty string"),
    ],
)
def test_bad_values_in_the_file(cli, tmp_path: Path, content: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    for args in (["--config", str(cfg), "config", "show"], ["config", "validate", str(cfg)]):
        one_line_exit_2(cli(*args, timeout=20), needle)


def test_a_config_file_that_starts_with_a_bom_is_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As Windows' Notepad saves UTF-8: the BOM was `invalid JSON ... Unexpected UTF-8 BOM`."""
    cfg = tmp_path / "c.json"
    cfg.write_bytes(b"\xef\xbb\xbf" + json.dumps({"ssh": {"port": 2222}}).encode())
    res = cli("--config", str(cfg), "config", "show", "--json", timeout=20)
    assert res.code == 0, res.stderr
    assert {s["key"]: s["value"] for s in json.loads(res.stdout)["settings"]}["ssh.port"] == 2222


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("WIN_AUTOMATION_SSH_CONNECT_TIMEOUT", "1e400", "must be a duration such as"),
        ("WIN_AUTOMATION_SSH_CONNECT_TIMEOUT", BIG_INT + "s", "must be a duration of zero or more"),
        ("WIN_AUTOMATION_SSH_PORT", BIG_INT, "ssh.port (from WIN_AUTOMATION_SSH_PORT) must be an integer"),
        ("WIN_AUTOMATION_SSH_HOST", "vm\nlocal", "ssh.host (from WIN_AUTOMATION_SSH_HOST) must be a host"),
        ("WIN_AUTOMATION_ARTIFACT_OUT", "a\nb", None),
        (
            "WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS",
            "1000000",
            "(from WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS) must be at most",
        ),
    ],
)
def test_bad_values_in_the_environment(cli, name: str, value: str, needle: str | None) -> None:  # type: ignore[no-untyped-def]
    res = cli("config", "show", env={name: value}, timeout=20)
    if needle is None:  # a path may hold a newline; shown, it stays on its row
        assert res.code == 0
        return
    one_line_exit_2(res, needle)
    assert len(res.stderr) < 300  # a 5000-digit value is not echoed whole


def test_a_fifo_directory_or_device_as_config_is_refused_at_once(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    cases = ((fifo, "is not a regular file"), (folder, "is a directory"), ("/dev/zero", "regular"))
    for path, needle in cases:
        one_line_exit_2(cli("--config", str(path), "config", "show", timeout=10), needle)
        one_line_exit_2(cli("config", "validate", str(path), timeout=10), needle)


def test_an_unreadable_config_is_the_projects_one_line_error(cli_env) -> None:  # type: ignore[no-untyped-def]
    home = unprivileged.shared_dir()
    cfg = home / "c.json"
    cfg.write_text("{}")
    cfg.chmod(0o000)
    unprivileged.not_mine(cfg)
    env = {**cli_env, "HOME": str(home), "WIN_AUTOMATION_DATA_DIR": str(home / "data")}
    res = unprivileged.run_cli("--config", str(cfg), "config", "show", env=env, cwd=home)
    one_line_exit_2(res, f"config file {cfg}: permission denied")


SECRET = "s3cr3t-value-never-shown"


@pytest.mark.parametrize(
    "value",
    [[SECRET], {"nested": SECRET}, {SECRET: 1}, [[SECRET]], True, 12345678901234],
    ids=["list", "object", "key", "nested-list", "bool", "number"],
)
@pytest.mark.parametrize("spec", [s for s in field_specs() if s.secret and not s.env_only], ids=str)
def test_no_error_echoes_a_secret_field(cli, tmp_path: Path, spec, value: object) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({spec.section: {spec.name: value}}))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, {})
    assert SECRET not in str(info.value) and "12345678901234" not in str(info.value)
    assert spec.path in str(info.value) and "not shown" in str(info.value)


def test_a_section_that_is_not_an_object_is_not_echoed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"hatchet": [SECRET]}))
    res = cli("--config", str(cfg), "config", "show")
    one_line_exit_2(res, "hatchet must be a JSON object, got an array")
    assert SECRET not in res.stderr


def test_secret_fields_come_from_the_schema() -> None:
    secrets = {s.path for s in field_specs() if s.secret}
    assert secrets == {"ssh.key_passphrase", "ssh.password", "hatchet.token", "playwright.ws_path"}
    env = {s.env: f"value-of-{s.name}" for s in field_specs() if s.secret}
    assert sorted(secret_values(load_config(None, env).config)) == sorted(env.values())


def test_config_show_json_is_typed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"ssh": {"port": 2201, "use_agent": False, "connect_timeout": "1m"}}))
    res = cli("--config", str(cfg), "config", "show", "--json", env={"HATCHET_CLIENT_TOKEN": SECRET})
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    values = {s["key"]: s["value"] for s in data["settings"]}
    assert data["file"] == str(cfg)
    assert values["ssh.port"] == 2201 and values["ssh.use_agent"] is False
    assert values["ssh.connect_timeout"] == 60.0 and values["ssh.command_timeout"] == 300.0
    assert values["artifacts.retention_days"] == 7 and values["ssh.key_file"] is None
    assert values["hatchet.token"] == "***" and values["ssh.password"] is None
    assert values["ssh.host"] == "localhost" and isinstance(values["data.dir"], str)
    assert SECRET not in res.stdout + res.stderr
    for spec in field_specs():  # every value has the JSON type of its field
        value = values[spec.path]
        if value is None:
            assert "optional" in spec.type_label
        elif spec.type_label.startswith(("duration",)):
            assert isinstance(value, float)
        elif spec.type_label.startswith(("integer", "port", "size")):  # a size is bytes
            assert isinstance(value, int) and not isinstance(value, bool)
        elif spec.type_label.startswith("boolean"):
            assert isinstance(value, bool)
        else:
            assert isinstance(value, str)
