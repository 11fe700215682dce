"""The README's configuration table and config.example.json, generated from the schema.

`python -m win_automation.config.doc` prints the table; tests check that the README and the
example file match what this module generates.
"""

from __future__ import annotations

import json
from typing import Any

from win_automation.config.load import display_value, field_specs


def markdown_table() -> str:
    lines = [
        "| setting | type | default | environment | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in field_specs():
        default = display_value(spec.default)
        shown = f"`{default}`" if default else "(unset)"
        env = f"`{spec.env}`" + (" (only)" if spec.env_only else "")
        lines.append(f"| `{spec.path}` | {spec.type_label} | {shown} | {env} | {spec.description} |")
    return "\n".join(lines)


def example() -> dict[str, Any]:
    """Every setting that the file may hold, at its default."""
    out: dict[str, Any] = {}
    for spec in field_specs():
        if spec.env_only:
            continue
        value = spec.default
        if value is not None and not isinstance(value, bool | int | str):
            value = display_value(value)
        out.setdefault(spec.section, {})[spec.name] = value
    return out


def example_json() -> str:
    return json.dumps(example(), indent=2) + "\n"


if __name__ == "__main__":
    print(markdown_table())
