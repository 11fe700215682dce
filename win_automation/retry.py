"""The connect-level retry policy that adapters apply: 3 attempts, backoff 500 ms, 1 s, 2 s.

Only transient errors (`WinAutomationError.transient`: connection failures and timeouts) are
retried; an authentication error, a host-key error or a command that ran and failed is not.
Each retry is logged with its attempt number. Whole steps are retried by the engine, and the VM
as a whole by the supervisor's circuit breaker: this layer does not do their jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from win_automation.errors import WinAutomationError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    first_wait: float = 0.5
    max_wait: float = 2.0

    def waits(self) -> list[float]:
        """The pauses between attempts: [0.5, 1.0] for the default policy."""
        return [min(self.first_wait * 2**i, self.max_wait) for i in range(self.attempts - 1)]


CONNECT_POLICY = RetryPolicy()


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, WinAutomationError) and exc.transient


def call_with_retry(fn: Callable[[], T], *, op: str, policy: RetryPolicy = CONNECT_POLICY) -> T:
    """Run `fn`, retrying transient project errors under `policy`; the last error propagates."""

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        err = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "retrying after a transient failure",
            extra={
                "op": op,
                "attempt": state.attempt_number,
                "of": policy.attempts,
                "wait_ms": round(wait * 1000),
                "err": str(err),
            },
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.first_wait, min=policy.first_wait, max=policy.max_wait),
        retry=retry_if_exception(_is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
