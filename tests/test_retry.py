"""The connect retry policy: which errors are retried, how often, and that each retry is logged."""

from __future__ import annotations

import logging

import pytest

from win_automation.errors import AuthError, CommandFailed, ConnectError, OperationTimeout
from win_automation.retry import RetryPolicy, call_with_retry

FAST = RetryPolicy(attempts=3, first_wait=0.001, max_wait=0.002)


def flaky(errors: list[Exception]):  # type: ignore[no-untyped-def]
    calls = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    return fn, calls


def test_default_policy_is_three_attempts_500ms_1s_2s() -> None:
    assert RetryPolicy().attempts == 3
    assert RetryPolicy(attempts=4).waits() == [0.5, 1.0, 2.0]


def test_transient_errors_are_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    fn, calls = flaky([ConnectError("refused"), OperationTimeout("slow")])
    with caplog.at_level(logging.WARNING):
        assert call_with_retry(fn, op="connect", policy=FAST) == "ok"
    assert len(calls) == 3
    assert [r.attempt for r in caplog.records] == [1, 2]  # type: ignore[attr-defined]


def test_gives_up_after_the_last_attempt() -> None:
    fn, calls = flaky([ConnectError("a"), ConnectError("b"), ConnectError("c"), ConnectError("d")])
    with pytest.raises(ConnectError, match="c"):
        call_with_retry(fn, op="connect", policy=FAST)
    assert len(calls) == 3


@pytest.mark.parametrize("error", [AuthError("denied"), CommandFailed("exit 1"), ValueError("bug")])
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    fn, calls = flaky([error])
    with pytest.raises(type(error)):
        call_with_retry(fn, op="connect", policy=FAST)
    assert len(calls) == 1
