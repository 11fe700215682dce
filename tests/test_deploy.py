"""The hatchet-lite deployment files say what the README says: ports, health port, pinned engine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "hatchet-lite" / "docker-compose.yml"


def test_compose_publishes_the_ui_grpc_and_health_ports_and_pins_the_engine() -> None:
    text = COMPOSE.read_text()
    for port in ("8888:8888", "7077:7077", "8733:8733"):
        assert f'"{port}"' in text
    image = re.search(
        r"image: ghcr.io/hatchet-dev/hatchet/hatchet-lite:\$\{HATCHET_LITE_TAG:-v(\d+)\.(\d+)\.(\d+)\}", text
    )
    assert image is not None, "the hatchet-lite image must be pinned to a version"
    assert tuple(int(p) for p in image.groups()) >= (0, 78, 23)
    assert "image: postgres:" in text and "condition: service_healthy" in text


def test_readme_gives_the_token_command_and_the_version_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "/hatchet-admin token create --config /config" in readme
    assert "deploy/hatchet-lite/docker-compose.yml" in readme
    assert "v0.78.23" in readme and "`>=1.43,<1.44`" in readme
    assert ".env" in readme and "90 days" in readme
