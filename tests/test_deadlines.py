"""win_automation.deadlines: the running operation's deadline, nested, per thread."""

from __future__ import annotations

import threading
import time

from win_automation import deadlines


def test_a_deadline_passes_nests_to_the_earliest_and_is_not_seen_by_another_thread() -> None:
    assert not deadlines.passed()
    with deadlines.within(None):
        assert not deadlines.passed()
    with deadlines.within(0.05):
        assert not deadlines.passed()
        with deadlines.within(3600):  # an inner, later deadline keeps the outer one
            time.sleep(0.1)
            assert deadlines.passed()
            seen: list[bool] = []
            other = threading.Thread(target=lambda: seen.append(deadlines.passed()))
            other.start()
            other.join()
            assert seen == [False]
        with deadlines.within(0):
            assert deadlines.passed()
    assert not deadlines.passed()
