"""Every setting: its section, type, default, environment variable and description.

Each field's environment variable is `WIN_AUTOMATION_<SECTION>_<FIELD>` unless the specification
names another (`json_schema_extra={"env": ...}`). Fields marked `env_only` are secrets that the
config file may not hold. The README's configuration table is generated from this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from win_automation.durations import parse_duration
from win_automation.sizes import parse_size


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        shown = str(value) if len(str(value)) <= 20 else f"an integer of {len(str(value))} digits"
        raise ValueError(f"must be between 1 and 65535, got {shown}")
    return value


def _clean(value: str) -> bool:
    """No whitespace, control or format character (U+2028, a newline, a zero-width space...)."""
    return value.isprintable() and not any(char.isspace() for char in value)


def _shown(value: str) -> str:
    """`value` as an error quotes it: whole up to 60 characters, else its start and its length."""
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}...({len(value)} characters)"


def _host(value: str) -> str:
    shown = _shown(value)
    if not value or not _clean(value):
        raise ValueError(f"must be a host name or address without spaces or control characters, got {shown}")
    try:  # what the resolver does first: a label over 63 characters was a traceback on connect
        name = value.rstrip(".").encode("idna")
    except UnicodeError:
        name = b""
    if not name or len(name) > 253:
        raise ValueError(
            "must be a host name or address (at most 253 characters, 63 between dots, no empty"
            f" part), got {shown}"
        )
    return value


MAX_URL = 2048
"""The longest URL a setting may hold (httpx refuses past 64 KiB, with a traceback)."""


def _url(value: str) -> str:
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not _clean(value) or not port_ok:
        raise ValueError(
            f"must be an http:// or https:// URL with a host (and a port 1-65535), no spaces or"
            f" control characters, got {_shown(value)}"
        )
    if len(value) > MAX_URL:
        raise ValueError(f"must be a URL of at most {MAX_URL} characters, got {_shown(value)}")
    _host_of(parts.hostname)
    return value


def _host_of(host: str) -> None:
    """A URL's or HOST:PORT's host as the resolver takes it (a label over 63 characters was a
    traceback on the first request)."""
    try:
        _host(host.strip("[]"))
    except ValueError as exc:
        raise ValueError(f"has a host that {exc}") from None


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    ok = sep and host and _clean(host) and port.isascii() and port.isdigit() and len(port) <= 5
    if not ok or not 1 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port between 1 and 65535, got {_shown(value)}")
    _host_of(host)
    return value


def _fingerprint(value: str | None) -> str | None:
    if value is not None and not value.startswith("SHA256:"):
        raise ValueError(f"must be an OpenSSH fingerprint starting with 'SHA256:', got {value!r}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be more than zero, got {value!r}")
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be zero or more, got {value!r}")
    return value


def _cron(value: str | None) -> str | None:
    if value is not None and len(value.split()) != 5:
        raise ValueError(f"must be a cron expression of five fields (e.g. '*/5 * * * *'), got {value!r}")
    return value


def _expand(value: Path) -> Path:
    return value.expanduser()


def _path_text(value: Any) -> Any:
    """An empty path is a mistake, not the working directory (`Path("")` is `.`)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a path, got an empty string (null unsets it)")
    return value


def _not_bool(value: Any) -> Any:
    """JSON's true and false are not the integers 1 and 0 (pydantic takes them as such)."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got {str(value).lower()}")
    return value


Port = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_port)]
Days = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=36500)]  # 100 years: past it, no date
Count = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=1_000_000)]
Host = Annotated[str, AfterValidator(_host)]
UserPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_expand)]
Url = Annotated[str, AfterValidator(_url)]
HostPort = Annotated[str, AfterValidator(_host_port)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
NonNegativeDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_not_negative)]
Size = Annotated[int, BeforeValidator(parse_size)]  # bytes, from `512MiB`, `1GiB` or plain bytes


def env(name: str) -> dict[str, Any]:
    """Field metadata: the environment variable the specification gives this field."""
    return {"env": name}


ENV_ONLY: dict[str, Any] = {"env_only": True}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class SSHConfig(Section):
    host: Host = Field("localhost", description="SSH host of the Windows VM.")
    port: Port = Field(22555, description="SSH port (the VM's forwarded OpenSSH).")
    user: str = Field("administrator", description="Login user on the VM.")
    key_file: UserPath | None = Field(None, description="Private key file; unset means the SSH agent.")
    key_passphrase: SecretStr | None = Field(
        None, description="Passphrase of `key_file`. Environment only.", json_schema_extra=ENV_ONLY
    )
    password: SecretStr | None = Field(
        None, description="Password login, when no key is used. Environment only.", json_schema_extra=ENV_ONLY
    )
    use_agent: bool = Field(True, description="Offer the keys of the running SSH agent.")
    known_hosts: UserPath = Field(
        Path("~/.local/share/win-automation/known_hosts"),
        description="The project's known-hosts file; `ssh trust` writes to it.",
    )
    host_key_fingerprint: Annotated[str | None, AfterValidator(_fingerprint)] = Field(
        None, description="A pinned host-key fingerprint (`SHA256:...`), trusted without known_hosts."
    )
    connect_timeout: PositiveDuration = Field(10.0, description="Deadline for one connection attempt.")
    command_timeout: PositiveDuration = Field(300.0, description="Default deadline of a remote command.")
    max_output: Size = Field(
        1 << 30,
        description="The most a job's command may print on each stream, in bytes (1073741824 is 1 GiB)"
        " or as `512MiB`, `2GiB`: past it the command is stopped and the job fails; its"
        " stdout.txt/stderr.txt keep the first that much.",
    )
    keepalive_interval: PositiveDuration = Field(
        30.0,
        description="How often the VM is asked for an answer (a keepalive); one unanswered for the"
        " stall bound closes the connection.",
    )
    remote_os: Literal["windows", "posix"] = Field(
        "windows",
        description="The VM's OS, which says how a timed-out command's process tree is killed.",
    )
    persist: NonNegativeDuration = Field(
        300.0,
        description="How long a CLI call's warm connection helper, and the warm CLI process that"
        " job commands start, stay after their last call (as OpenSSH's ControlPersist); 0 turns both"
        " off (the launcher reads `WIN_AUTOMATION_SSH_PERSIST=0` itself, not the file).",
    )
    warm_powershell: bool = Field(
        False,
        description="Run each PowerShell command in one long-lived `powershell.exe` per connection"
        " (the warm helper's, the worker's), each in a new runspace, instead of one process per command.",
    )
    forward_services: bool = Field(
        False,
        description="Reach the VM's services (Aloha, Playwright) through a port forward over this SSH "
        "connection to the VM's own loopback; their configured ports are then the VM's own.",
    )

    @property
    def vm_key(self) -> str:
        """`host:port`: which VM this is (the desktop lock, Hatchet's concurrency key)."""
        return f"{self.host}:{self.port}"


class AlohaConfig(Section):
    server_url: Url = Field("http://127.0.0.1:7887/", description="ShowUI-Aloha server (port 7887).")
    client_url: Url = Field("http://127.0.0.1:7888", description="ShowUI-Aloha client (port 7888).")
    server_start_cmd: str = Field(
        "Start-ScheduledTask -TaskName AlohaServer",
        description="PowerShell that starts the Aloha server on the VM (AlohaServerStartCmd).",
    )
    client_start_cmd: str = Field(
        "Start-ScheduledTask -TaskName AlohaClient",
        description="PowerShell that starts the Aloha client on the VM (AlohaClientStartCmd).",
    )
    request_timeout: PositiveDuration = Field(10.0, description="Deadline of one HTTP request to Aloha.")
    poll_interval: PositiveDuration = Field(
        1.0, description="How often a running task is checked for its end (a `/run_task` that answers 409)."
    )
    stop_timeout: PositiveDuration = Field(
        60.0, description="After `/stop` (deadline, cancel), how long to wait for the task to end."
    )


class HatchetConfig(Section):
    url: Url = Field("http://localhost:8888", description="Hatchet UI and REST API.")
    host_port: HostPort = Field(
        "localhost:7077",
        description="Hatchet gRPC endpoint.",
        json_schema_extra=env("HATCHET_CLIENT_HOST_PORT"),
    )
    health_live_url: Url = Field("http://localhost:8733/live", description="Engine liveness endpoint.")
    health_ready_url: Url = Field("http://localhost:8733/ready", description="Engine readiness endpoint.")
    token: SecretStr | None = Field(
        None,
        description="API token; setting it makes Hatchet the default engine.",
        json_schema_extra=env("HATCHET_CLIENT_TOKEN"),
    )
    tls_strategy: Literal["none", "tls", "mtls"] = Field(
        "none",
        description="gRPC TLS strategy (hatchet-lite on localhost serves plain gRPC).",
        json_schema_extra=env("HATCHET_CLIENT_TLS_STRATEGY"),
    )
    namespace: str = Field(
        "", description="Prefix for workflow names.", json_schema_extra=env("HATCHET_CLIENT_NAMESPACE")
    )
    request_timeout: PositiveDuration = Field(
        10.0,
        description="Deadline of one call to the engine (trigger, follow, cancel, version); a job "
        "command following a run gives up once the engine has answered nothing for this long.",
    )


class PlaywrightConfig(Section):
    host: Host = Field("127.0.0.1", description="Host of the Playwright browser server.")
    port: Port = Field(9323, description="Port of the Playwright browser server.")
    ws_path: SecretStr | None = Field(
        None,
        description="The server's wsPath, kept out of logs (not authentication: the port's reachability "
        "is). Environment only.",
        json_schema_extra={**ENV_ONLY, **env("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH")},
    )
    install_dir: str = Field(
        r"C:\ProgramData\win-automation\playwright",
        description="Where `playwright install` puts the server on the VM (driver, wsPath, task files).",
    )
    stall_timeout: PositiveDuration = Field(
        15.0,
        description="How long the server may leave a plain HTTP request unanswered during a session "
        "(paused, wedged) before the session is dropped and its job fails with exit 3.",
    )


class ArtifactsConfig(Section):
    out_dir: UserPath = Field(
        Path("./artifacts"),
        description="Local artifact root; one folder per job.",
        json_schema_extra=env("WIN_AUTOMATION_ARTIFACT_OUT"),
    )
    retention_days: Days = Field(
        7,
        description="Job folders older than this are pruned.",
        json_schema_extra=env("WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS"),
    )
    remote_dir: str = Field(
        r"C:\ProgramData\win-automation\artifacts", description="Artifact root on the VM."
    )


class MetricsConfig(Section):
    path: UserPath | None = Field(
        None,
        description="Append metric lines to this file; unset means stdout.",
        json_schema_extra=env("WIN_AUTOMATION_METRICS_PATH"),
    )
    interval: PositiveDuration = Field(30.0, description="How often metric lines are emitted.")


class DataConfig(Section):
    dir: UserPath = Field(
        Path("~/.local/share/win-automation"), description="Data directory: the job journal and locks."
    )
    journal_retention_days: Days = Field(
        30,
        description="Records of jobs that ended longer ago than this leave the journal (its steps and "
        "events with them; interrupted jobs stay); 0 keeps them all.",
        json_schema_extra=env("WIN_AUTOMATION_JOURNAL_RETENTION_DAYS"),
    )


class SupervisorConfig(Section):
    interval: PositiveDuration = Field(60.0, description="Time between supervisor rounds.")
    breaker_threshold: Count = Field(3, description="Consecutive failures that open the circuit breaker.")
    breaker_cooldown: PositiveDuration = Field(60.0, description="How long an open breaker waits.")
    check_timeout: PositiveDuration = Field(
        5.0, description="Deadline of one health check (each probe of `doctor` and the supervisor)."
    )
    remediation_ceiling: Count = Field(
        3, description="Remediations of one check per hour; beyond it the check needs a person."
    )
    remediation_wait: PositiveDuration = Field(
        60.0, description="How long a remediation waits for its check to pass again."
    )
    firewall_remote_address: str | None = Field(
        None,
        description="The host's address as the VM sees it (10.0.2.2 with QEMU user-mode networking);"
        " the firewall rules admit only it. Unset: the SSH client's address as the VM sees it.",
    )
    cron: Annotated[str | None, AfterValidator(_cron)] = Field(
        None,
        description="Cron schedule of the `supervisor-pass` workflow on Hatchet (e.g. `* * * * *`);"
        " unset: no cron is registered.",
    )


class VmConfig(Section):
    qmp_socket: UserPath | None = Field(
        None,
        description="QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`); unset turns off `vm` commands"
        " and GUI jobs' screenshots.",
    )
    qmp_timeout: PositiveDuration = Field(10.0, description="Deadline of one QMP command (and the greeting).")
    snapshot_timeout: PositiveDuration = Field(
        900.0, description="How long `vm snapshot save/load/delete` wait for QEMU's job to conclude."
    )


class Config(Section):
    ssh: SSHConfig = SSHConfig()
    aloha: AlohaConfig = AlohaConfig()
    hatchet: HatchetConfig = HatchetConfig()
    playwright: PlaywrightConfig = PlaywrightConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    metrics: MetricsConfig = MetricsConfig()
    data: DataConfig = DataConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    vm: VmConfig = VmConfig()
