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


def utf8(text: str) -> bool:
    """Whether `text` is valid UTF-8 (argv's bytes that are not come as lone surrogates)."""
    return text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text)


def utf8_words(words: list[str], name: str) -> None:
    """UsageError `NAME ...: not valid UTF-8` for the first word that is not (what goes to the VM,
    the journal and Hatchet is UTF-8; it was an encoding traceback)."""
    from win_automation.errors import UsageError

    for word in words:
        if not utf8(word):
            raise UsageError(f"{name} {word}: not valid UTF-8")
