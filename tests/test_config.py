"""Configuration: three layers, sources, and a one-line error for each kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from win_automation.config import load_config
from win_automation.errors import ConfigError


def write(tmp_path: Path, data: object, name: str = "c.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_defaults_come_from_the_specification() -> None:
    cfg = load_config(None, {}).config
    assert (cfg.ssh.user, cfg.ssh.host, cfg.ssh.port) == ("administrator", "localhost", 22555)
    assert cfg.aloha.server_url == "http://127.0.0.1:7887/"
    assert cfg.aloha.client_url == "http://127.0.0.1:7888"
    assert cfg.hatchet.url == "http://localhost:8888"
    assert cfg.hatchet.host_port == "localhost:7077"
    assert cfg.hatchet.health_live_url == "http://localhost:8733/live"
    assert cfg.hatchet.health_ready_url == "http://localhost:8733/ready"
    assert (cfg.playwright.host, cfg.playwright.port) == ("127.0.0.1", 9323)
    assert cfg.artifacts.out_dir == Path("artifacts")
    assert cfg.artifacts.retention_days == 7
    assert cfg.supervisor.breaker_threshold == 3
    assert cfg.supervisor.breaker_cooldown == 60.0
    assert cfg.ssh.known_hosts == Path(os.path.expanduser("~/.local/share/win-automation/known_hosts"))


@pytest.mark.parametrize(
    ("field", "file_value", "env_name", "env_value", "expected_file", "expected_env"),
    [
        ("ssh.port", 2222, "WIN_AUTOMATION_SSH_PORT", "2200", 2222, 2200),
        ("ssh.command_timeout", "10m", "WIN_AUTOMATION_SSH_COMMAND_TIMEOUT", "500ms", 600.0, 0.5),
        ("artifacts.retention_days", 3, "WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS", "14", 3, 14),
        (
            "hatchet.host_port",
            "engine:7077",
            "HATCHET_CLIENT_HOST_PORT",
            "other:7078",
            "engine:7077",
            "other:7078",
        ),
        ("ssh.use_agent", False, "WIN_AUTOMATION_SSH_USE_AGENT", "true", False, True),
        ("supervisor.interval", 15, "WIN_AUTOMATION_SUPERVISOR_INTERVAL", "2m", 15.0, 120.0),
    ],
)
def test_each_layer_overrides_the_one_before(
    tmp_path: Path,
    field: str,
    file_value: object,
    env_name: str,
    env_value: str,
    expected_file: object,
    expected_env: object,
) -> None:
    section, name = field.split(".")
    path = write(tmp_path, {section: {name: file_value}})

    def value(loaded):  # type: ignore[no-untyped-def]
        return getattr(getattr(loaded.config, section), name)

    default = load_config(None, {})
    from_file = load_config(path, {})
    from_env = load_config(path, {env_name: env_value})
    assert default.sources[field] == "default"
    assert (value(from_file), from_file.sources[field]) == (expected_file, "file")
    assert (value(from_env), from_env.sources[field]) == (expected_env, "env")
    assert value(default) != expected_file


def test_env_without_file_and_other_fields_keep_their_source(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, {"ssh": {"host": "vm"}}), {"WIN_AUTOMATION_SSH_USER": "bob"})
    assert loaded.config.ssh.host == "vm" and loaded.config.ssh.user == "bob"
    assert loaded.sources["ssh.host"] == "file"
    assert loaded.sources["ssh.user"] == "env"
    assert loaded.sources["ssh.port"] == "default"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ssh": {"port": 0}}, "ssh.port must be between 1 and 65535, got 0"),
        ({"ssh": {"port": 70000}}, "ssh.port must be between 1 and 65535, got 70000"),
        ({"ssh": {"prot": 22}}, "ssh.prot: unknown key (did you mean 'port'?)"),
        ({"shh": {}}, "shh: unknown section (did you mean 'ssh'?)"),
        ({"ssh": {"zzz": 1}}, "ssh.zzz: unknown key"),
        ({"ssh": {"port": "abc"}}, "ssh.port must be an integer, got 'abc'"),
        ({"ssh": {"use_agent": "maybe"}}, "ssh.use_agent must be true or false, got 'maybe'"),
        ({"ssh": 5}, "ssh must be a JSON object, got a number"),
        ([1, 2], "must hold a JSON object, got list"),
        ({"ssh": {"connect_timeout": "soon"}}, "ssh.connect_timeout must be a duration such as 500ms"),
        ({"ssh": {"connect_timeout": "0s"}}, "ssh.connect_timeout must be more than zero, got 0.0"),
        ({"aloha": {"server_url": "localhost:7887"}}, "aloha.server_url must be an http:// or https:// URL"),
        ({"hatchet": {"host_port": "nohost"}}, "hatchet.host_port must be HOST:PORT"),
        # a label over 63 characters, a URL over 2048: were tracebacks at the first request
        (
            {"aloha": {"server_url": f"http://{'a' * 64}.lan:7887"}},
            "aloha.server_url has a host that must be a host name or address (at most 253 characters, 63",
        ),
        (
            {"hatchet": {"health_live_url": f"http://vm.lan:8733/{'x' * 3000}"}},
            "hatchet.health_live_url must be a URL of at most 2048 characters, got 'http://vm.lan:8733/xxxxx",
        ),
        ({"hatchet": {"host_port": f"{'a' * 64}.lan:7077"}}, "hatchet.host_port has a host that must be"),
        ({"hatchet": {"tls_strategy": "ssl"}}, "hatchet.tls_strategy must be one of 'none', 'tls' or 'mtls'"),
        ({"artifacts": {"retention_days": -1}}, "artifacts.retention_days must be at least 0, got -1"),
        ({"ssh": {"host_key_fingerprint": "abc"}}, "ssh.host_key_fingerprint must be an OpenSSH fingerprint"),
        ({"ssh": {"password": "hunter2"}}, "ssh.password is a secret: set it with the environment variable"),
        ({"playwright": {"ws_path": "x"}}, "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH"),
    ],
)
def test_bad_file_values_name_the_field_and_the_problem(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), {})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid JSON at line 3 column 1"):
        load_config(write(tmp_path, '{\n  "ssh": {"port": 1},\n}'), {})


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.parent.joinpath("file").write_text(""), r"cannot read it \(Not a directory\)"),
        (lambda p: p.write_bytes(b"\xff\xfe{"), "not UTF-8"),
    ],
)
def test_missing_or_unreadable_file(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.json"
    setup(path)
    if "Not a directory" in message:
        path = tmp_path / "file" / "c.json"
    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WIN_AUTOMATION_SSH_PORT": "x"},
            "ssh.port (from WIN_AUTOMATION_SSH_PORT) must be an integer, got 'x'",
        ),
        (
            {"WIN_AUTOMATION_SSH_PORT": "0"},
            "ssh.port (from WIN_AUTOMATION_SSH_PORT) must be between 1 and 65535",
        ),
        (
            {"WIN_AUTOMATION_SUPERVISOR_BREAKER_COOLDOWN": "1y"},
            "(from WIN_AUTOMATION_SUPERVISOR_BREAKER_COOLDOWN)",
        ),
        ({"HATCHET_CLIENT_TLS_STRATEGY": "yes"}, "hatchet.tls_strategy (from HATCHET_CLIENT_TLS_STRATEGY)"),
        (
            {"WIN_AUTOMATION_ALOHA_CLIENT_URL": "ftp://x"},
            "aloha.client_url (from WIN_AUTOMATION_ALOHA_CLIENT_URL)",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert message in str(info.value)


def test_secrets_come_from_the_environment_and_are_masked() -> None:
    loaded = load_config(
        None,
        {
            "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH": "ws-secret-path",
            "HATCHET_CLIENT_TOKEN": "tok-secret",
            "WIN_AUTOMATION_SSH_PASSWORD": "pw-secret",
            "WIN_AUTOMATION_SSH_KEY_PASSPHRASE": "pass-secret",
        },
    )
    cfg = loaded.config
    assert (
        cfg.playwright.ws_path is not None and cfg.playwright.ws_path.get_secret_value() == "ws-secret-path"
    )
    shown = repr(list(loaded.rows()))
    for secret in ("ws-secret-path", "tok-secret", "pw-secret", "pass-secret"):
        assert secret not in shown
    masked = {k: v for k, v, _ in loaded.rows() if v == "***"}
    assert set(masked) == {"ssh.key_passphrase", "ssh.password", "hatchet.token", "playwright.ws_path"}


def test_hatchet_token_may_come_from_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"hatchet": {"token": "file-token"}}), {}).config
    assert cfg.hatchet.token is not None and cfg.hatchet.token.get_secret_value() == "file-token"
