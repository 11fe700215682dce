"""Loading the configuration: built-in defaults < JSON file < environment, with sources kept.

Every failure is a `ConfigError` whose message names the field path (or the environment
variable) and what is wrong with the value, on one line.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from win_automation import jsontext
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
    "parse_size": "size",
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


def _is_secret(info: FieldInfo) -> bool:
    """A SecretStr field (optional or not): its value is never shown, logged or echoed."""
    return info.annotation is SecretStr or SecretStr in get_args(info.annotation)


@functools.cache
def field_specs() -> tuple[FieldSpec, ...]:
    """All settings, in schema order (worked out once per process: each config load reads it)."""
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
                    secret=_is_secret(info),
                    description=info.description or "",
                    type_label=_type_label(info),
                    default=info.default,
                )
            )
    return tuple(specs)


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

    def typed(self) -> Iterator[tuple[str, Any, Source]]:
        """(path, JSON value, source) for every setting: integers, booleans, durations in seconds
        (numbers), paths and strings as strings, null when unset; a set secret is "***"."""
        for spec in field_specs():
            value = getattr(getattr(self.config, spec.section), spec.name)
            yield spec.path, json_value(value), self.sources[spec.path]


def json_value(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


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
        data = jsontext.loads(jsontext.read_text(path))
    except ValueError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a JSON object, got {type(data).__name__}")
    sections = {s: {f.name: f for f in field_specs() if f.section == s} for s in Config.model_fields}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{section}: unknown section{_suggest(section, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{section} must be a JSON object, got {_json_type(values)}")
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
    "int_parsing_size": "must be an integer of a sensible size",
    "finite_number": "must be a finite number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path string",
    "literal_error": "must be one of",
    "greater_than_equal": "must be at least",
}


def _json_type(value: Any) -> str:
    """A JSON value's kind, for errors that must not echo the value itself."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _shown(value: Any) -> str:
    """A bad value for an error message, cut short so that the message stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


def _problem(error: Mapping[str, Any], *, secret: bool = False) -> str:
    kind, value = error["type"], error.get("input")
    if secret:  # never echo a secret, not even a malformed one
        return f"must be a string, got {_json_type(value)} (the value is not shown: it is a secret)"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}, got {_shown(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {error['ctx']['ge']}, got {_shown(value)}"
    if kind == "less_than_equal":
        return f"must be at most {error['ctx']['le']}, got {_shown(value)}"
    base = _MESSAGES.get(kind, str(error["msg"]).lower())
    return f"{base}, got {_shown(value)}"


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
        value = data.get(spec.section, {}).get(spec.name)
        if isinstance(value, str) and "\0" in value:  # every file API refuses it: a traceback later
            where = f"{spec.path} (from {spec.env})" if spec.path in env_of else spec.path
            raise ConfigError(f"{where} must not contain a NUL character")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        where = f"{field} (from {env_of[field]})" if field in env_of else field
        secret = any(spec.secret and field.startswith(spec.path) for spec in field_specs())
        raise ConfigError(f"{where} {_problem(error, secret=secret)}") from None
    return LoadedConfig(config=config, sources=sources, file=path)


def secret_values(config: Config) -> list[str]:
    """The values of every secret (SecretStr) setting that is set: what logs must mask."""
    values = []
    for spec in field_specs():
        value = getattr(getattr(config, spec.section), spec.name)
        if spec.secret and isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    return values
