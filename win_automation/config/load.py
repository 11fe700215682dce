"""Loading the configuration: built-in defaults < JSON file < environment, with sources kept.

Every failure is a `ConfigError` whose message names the field path (or the environment
variable) and what is wrong with the value, on one line.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from win_automation.config.schema import Config
from win_automation.durations import format_duration
from win_automation.errors import ConfigError

Source = Literal["default", "file", "env"]


@dataclass(frozen=True)
class FieldSpec:
    """One setting: `section.name`, its environment variable and what it is."""

    section: str
    name: str
    env: str
    env_only: bool
    secret: bool
    description: str
    type_label: str
    default: Any

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


_VALIDATED = {
    "parse_duration": "duration",
    "_port": "port",
    "_url": "URL",
    "_host_port": "host:port",
    "_fingerprint": "fingerprint",
}
_BASIC = {str: "string", int: "integer", bool: "boolean", Path: "path", SecretStr: "secret"}


def _type_label(info: FieldInfo) -> str:
    """A reader's name for a field's type: `duration`, `port`, `path (optional)`."""
    annotation, optional = info.annotation, False
    args = get_args(annotation)
    if type(None) in args:
        optional, annotation = True, next(a for a in args if a is not type(None))
        args = get_args(annotation)
    names = [getattr(getattr(m, "func", None), "__name__", "") for m in [*info.metadata, *args[1:]]]
    label = next((_VALIDATED[n] for n in names if n in _VALIDATED), None)
    if label is None and get_origin(annotation) is Literal:
        label = "one of " + ", ".join(str(a) for a in args)
    if label is None and get_origin(annotation) is Annotated:
        label = _BASIC.get(args[0], str(args[0]))
    if label is None:
        label = _BASIC.get(annotation, str(annotation)) if isinstance(annotation, type) else str(annotation)
    return f"{label} (optional)" if optional else label


def field_specs() -> list[FieldSpec]:
    """All settings, in schema order."""
    specs = []
    for section, section_field in Config.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            default_env = f"WIN_AUTOMATION_{section.upper()}_{name.upper()}"
            specs.append(
                FieldSpec(
                    section=section,
                    name=name,
                    env=str(extra.get("env", default_env)),
                    env_only=bool(extra.get("env_only", False)),
                    secret=_type_label(info).startswith("secret"),
                    description=info.description or "",
                    type_label=_type_label(info),
                    default=info.default,
                )
            )
    return specs


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    sources: dict[str, Source]
    file: Path | None

    def rows(self) -> Iterator[tuple[str, str, Source]]:
        """(path, display value, source) for every setting, secrets masked."""
        for spec in field_specs():
            value = getattr(getattr(self.config, spec.section), spec.name)
            yield spec.path, display_value(value), self.sources[spec.path]


def display_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "***"
    if value is None:
        return ""
    if isinstance(value, float):
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings as nested dicts; unknown keys and env-only secrets are refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a JSON object, got {type(data).__name__}")
    sections = {s: {f.name: f for f in field_specs() if f.section == s} for s in Config.model_fields}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{section}: unknown section{_suggest(section, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{section} must be a JSON object, got {json.dumps(values)}")
        for key in values:
            spec = sections[section].get(key)
            if spec is None:
                raise ConfigError(f"{section}.{key}: unknown key{_suggest(key, list(sections[section]))}")
            if spec.env_only:
                raise ConfigError(f"{spec.path} is a secret: set it with the environment variable {spec.env}")
    return data


_MESSAGES = {
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path string",
    "literal_error": "must be one of",
    "greater_than_equal": "must be at least",
}


def _problem(error: Mapping[str, Any]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}, got {value!r}"
    if kind == "greater_than_equal":
        return f"must be at least {error['ctx']['ge']}, got {value!r}"
    base = _MESSAGES.get(kind, str(error["msg"]).lower())
    return f"{base}, got {value!r}"


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Defaults, then the JSON file at `path`, then the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, dict[str, Any]] = read_config_file(path) if path is not None else {}
    sources: dict[str, Source] = {}
    env_of: dict[str, str] = {}
    for spec in field_specs():
        sources[spec.path] = "file" if spec.name in data.get(spec.section, {}) else "default"
        raw = environ.get(spec.env)
        if raw is not None and raw != "":
            data.setdefault(spec.section, {})[spec.name] = raw
            sources[spec.path] = "env"
            env_of[spec.path] = spec.env
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        where = f"{field} (from {env_of[field]})" if field in env_of else field
        raise ConfigError(f"{where} {_problem(error)}") from None
    return LoadedConfig(config=config, sources=sources, file=path)
