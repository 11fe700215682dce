"""Version numbers the health checks compare: semver parsing and the engine version the SDK needs."""

from __future__ import annotations

import re

# hatchet-sdk 1.43 registers workers with slot types from this engine version on; below it the SDK
# takes a deprecated path that, since August 2026, fails at random (DeprecationError 1 call in 5).
MIN_HATCHET_ENGINE = (0, 78, 23)
_SEMVER = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_semver(text: str) -> tuple[int, int, int] | None:
    """`v0.80.1-rc1` -> (0, 80, 1); None when `text` holds no MAJOR.MINOR.PATCH."""
    match = _SEMVER.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def show(version: tuple[int, ...]) -> str:
    return "v" + ".".join(map(str, version))
