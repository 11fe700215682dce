"""The README's configuration table and config.example.json match the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

from win_automation.config import field_specs, load_config
from win_automation.config.doc import example_json, markdown_table
from win_automation.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_configuration_table_is_generated_from_the_schema() -> None:
    assert markdown_table() in README, "regenerate with: python -m win_automation.config.doc"
    for spec in field_specs():
        assert f"`{spec.path}`" in README and spec.env in README


def test_example_config_lists_every_file_field_and_loads() -> None:
    example = ROOT / "config.example.json"
    assert example.read_text() == example_json()
    data = json.loads(example.read_text())
    listed = {f"{s}.{k}" for s, fields in data.items() for k in fields}
    assert listed == {s.path for s in field_specs() if not s.env_only}
    assert load_config(example, {}).config == load_config(None, {}).config


def test_readme_documents_every_exit_code() -> None:
    for code in EXIT_CODES:
        assert f"| {code} |" in README


def test_the_front_door_commands_work_as_shown() -> None:
    """The set-up says how `win-automation` gets on PATH, and every command says `python3`."""
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in README
    assert re.search(r"(?<![\w/.])python (?!3)", README.replace(".venv/bin/python ", "")) is None
    using = README.split("## Using it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    for line in using.strip().splitlines():
        assert line.startswith("win-automation "), line
