"""The global options every command sees (`--config`, `-v`, `--debug`), and config loading for commands."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from win_automation.config import Config, LoadedConfig


@dataclass
class CliState:
    config_path: Path | None = None
    debug: bool = False
    verbose: bool = False
    _loaded: LoadedConfig | None = None

    def loaded(self) -> LoadedConfig:
        """The effective configuration; its secrets are registered for log redaction."""
        if self._loaded is None:
            from win_automation import log
            from win_automation.config import load_config
            from win_automation.config.load import secret_values

            self._loaded = load_config(self.config_path)
            for secret in secret_values(self._loaded.config):
                log.register_secret(secret)
            overrides = sorted(k for k, source in self._loaded.sources.items() if source != "default")
            logging.getLogger(__name__).debug(
                "configuration loaded",
                extra={"op": "load", "file": self.config_path, "set": ",".join(overrides)},
            )
        return self._loaded

    def config(self) -> Config:
        return self.loaded().config


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj
