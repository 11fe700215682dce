"""Job ids: generated ids sort by time and validate; anything else (traversal, absolute) is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from win_automation.errors import UsageError
from win_automation.jobs.ids import is_job_id, job_id_time, new_job_id, new_trace_id, validate_job_id


def test_generated_ids_validate_sort_by_time_and_are_unique() -> None:
    ids = [new_job_id(1_800_000_000.0 + i / 10) for i in range(50)]
    assert all(validate_job_id(i) == i for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert abs(job_id_time(ids[3]) - 1_800_000_000.3) < 0.002
    assert len({new_job_id(1.0) for _ in range(1000)}) == 1000  # same millisecond, still unique
    trace = new_trace_id()
    assert len(trace) == 32 and int(trace, 16) >= 0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../x",
        "/etc/passwd",
        "..",
        ".",
        "a/b",
        "20261122T015916123Z-3f9a1c0b7e2d/../x",
        "20261122T015916123Z-3f9a1c0b7e2d\n",
        "20261122T015916123Z-3F9A1C0B7E2D",
        " 20261122T015916123Z-3f9a1c0b7e2d",
    ],
)
def test_bad_ids_are_usage_errors_naming_the_argument(bad: str) -> None:
    with pytest.raises(UsageError, match=r"^JOB_ID: .* is not a job id") as info:
        validate_job_id(bad)
    assert info.value.exit_code == 2


@given(st.text(max_size=40))
def test_no_arbitrary_text_passes_unless_it_has_the_generated_form(text: str) -> None:
    if is_job_id(text):
        assert "/" not in text and ".." not in text and len(text) == 32
    else:
        with pytest.raises(UsageError):
            validate_job_id(text)


# A valid id with its digits written in other scripts: Python's `\d` (and int()) accept them all.
_ZEROS = {
    "arabic-indic": 0x0660,
    "extended-arabic-indic": 0x06F0,
    "fullwidth": 0xFF10,
    "devanagari": 0x0966,
    "mathematical-bold": 0x1D7CE,
}
_DIGITS = {name: "".join(chr(zero + i) for i in range(10)) for name, zero in _ZEROS.items()}


def _spelled(job_id: str, digits: str, only_first: bool) -> str:
    out, done = [], False
    for char in job_id:
        if char.isdigit() and not (only_first and done):
            out.append(digits[int(char)])
            done = True
        else:
            out.append(char)
    return "".join(out)


@pytest.mark.parametrize("script", sorted(_DIGITS))
@pytest.mark.parametrize("only_first", [True, False])
def test_ids_with_non_ascii_digits_are_refused(script: str, only_first: bool) -> None:
    bad = _spelled("20261122T015916123Z-3f9a1c0b7e2d", _DIGITS[script], only_first)
    assert not is_job_id(bad)
    with pytest.raises(UsageError, match="is not a job id"):
        validate_job_id(bad)


@given(st.text(min_size=1, max_size=40).filter(lambda t: not t.isascii()))
def test_no_id_holding_a_non_ascii_character_passes(text: str) -> None:
    assert not is_job_id(text)


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "show"],
        ["jobs", "cancel"],
        ["jobs", "resume"],
        ["artifacts", "verify", "--job"],
        ["artifacts", "list", "--job"],
        ["artifacts", "fetch", "--out", "out", "--job"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_the_cli_refuses_them_before_any_file_is_touched(cli, tmp_path, args) -> None:  # type: ignore[no-untyped-def]
    bad = _spelled("20261122T015916123Z-3f9a1c0b7e2d", _DIGITS["arabic-indic"], only_first=False)
    ran = cli(*args, bad)
    assert ran.code == 2, ran.stderr
    assert ran.stderr.count("\n") == 1 and "is not a job id" in ran.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "artifacts").exists()
    assert not (tmp_path / "out").exists()
