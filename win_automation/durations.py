"""Durations as users write them (`500ms`, `30s`, `5m`, `2h`, `7d`, plain seconds) and back, and
the one RFC 3339 formatter of timestamps (logs, metrics, manifests, `jobs` output)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
# The longest duration accepted (3650 days): every wait, socket timeout and date computed from a
# duration stays far inside what threading, select and datetime can represent.
MAX_SECONDS = 3650 * 86400.0


def parse_duration(value: object) -> float:
    """Seconds from `value`; raises ValueError with the reason when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as 500ms, 30s, 5m or plain seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) if not isinstance(value, int) or value.bit_length() < 1024 else math.inf
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"must be a duration such as 500ms, 30s, 5m or plain seconds, got {_shown(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of zero or more seconds, got {_shown(value)}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"must be at most 3650d (10 years), got {_shown(value)}")
    return seconds


def _shown(value: object) -> str:
    """`value` for an error message: a huge number is cut, so the message stays one short line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 -> '500ms', 300 -> '5m', 7.25 -> '7.25s'."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def rfc3339(timestamp: float, *, millis: bool = True) -> str:
    """A Unix time as RFC 3339 in UTC: `2026-11-22T10:00:00.123Z` (or without the milliseconds)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{moment.microsecond // 1000:03d}Z" if millis else "Z")
