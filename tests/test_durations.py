from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from win_automation.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("12", 12.0),
        (12, 12.0),
        (1.5, 1.5),
        (" 3s ", 3.0),
        ("0.25s", 0.25),
    ],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "-3s", "s", "5 minutes", True, None, [], float("nan"), -1])
def test_parse_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_round_trips(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_prefers_the_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (0.5, 30, 300, 90, 86400)] == ["500ms", "30s", "5m", "90s", "1d"]
