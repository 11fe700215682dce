"""Option values parsed into one-line usage errors that name the option (exit 2)."""

from __future__ import annotations


def duration_option(value: str, option: str, *, positive: bool = False) -> float:
    """Seconds from `30s`, `5m`, `7d`...; UsageError `--option: why` when it is not one."""
    from win_automation.durations import parse_duration
    from win_automation.errors import UsageError

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if positive and seconds <= 0:
        raise UsageError(f"{option}: must be more than zero")
    return seconds
