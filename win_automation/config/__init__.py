"""Configuration: the schema of every setting and its three-layer loading."""

from win_automation.config.load import FieldSpec, LoadedConfig, field_specs, load_config
from win_automation.config.schema import Config

__all__ = ["Config", "FieldSpec", "LoadedConfig", "field_specs", "load_config"]
