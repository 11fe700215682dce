"""The circuit breaker on the journal: a hypothesis state machine with an injected clock against a
model of the rules, and two processes sharing one journal (one trial, one remediation)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from win_automation.jobs import supervision
from win_automation.jobs.breaker import Breaker, BreakerState, Permit
from win_automation.jobs.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD, COOLDOWN, LEASE = 3, 60.0, 100.0


class BreakerMachine(RuleBasedStateMachine):
    """Two owners acquire and record passes while the clock moves; a plain model says what the
    breaker must answer, and the journal's row must agree with it after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.now = 1_000_000.0
        self.journal = Journal.open(Path(self.dir.name), recover=False)
        self.breaker = Breaker(
            self.journal,
            "vm:test",
            threshold=THRESHOLD,
            cooldown=COOLDOWN,
            lease=LEASE,
            clock=lambda: self.now,
        )
        self.permits: dict[str, Permit] = {}
        # the model
        self.state, self.failures, self.opened_at = "closed", 0, 0.0
        self.holder: str | None = None
        self.lease_until = 0.0

    def teardown(self) -> None:
        self.journal.close()
        self.dir.cleanup()

    @rule(seconds=st.sampled_from([0.0, 1.0, 30.0, 59.9, 60.0, 61.0, 150.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(owner=st.sampled_from(["a", "b"]))
    def acquire(self, owner: str) -> None:
        permit = self.breaker.acquire(owner)
        if self.state == "closed":
            expected = "closed"
        elif self.state == "open":
            if self.now < self.opened_at + COOLDOWN:
                expected = "open"
                assert abs(permit.remaining - (self.opened_at + COOLDOWN - self.now)) < 1e-6
            else:
                expected = "trial"
                self.state, self.holder, self.lease_until = "half-open", owner, self.now + LEASE
        elif self.holder == owner or self.lease_until <= self.now:
            expected = "trial"
            self.holder, self.lease_until = owner, self.now + LEASE
        else:
            expected = "open"
        assert permit.mode == expected, (permit, self.state)
        assert permit.remediate == (expected != "open")
        self.permits[owner] = permit

    @precondition(lambda self: bool(self.permits))
    @rule(owner=st.sampled_from(["a", "b"]), success=st.booleans())
    def record(self, owner: str, success: bool) -> None:
        permit = self.permits.pop(owner, None)
        if permit is None:
            return
        moved = self.breaker.record(permit, success=success)
        before = self.state
        if permit.mode == "trial" and self.state == "half-open" and self.holder == owner:
            self.state = "closed" if success else "open"
            self.failures = 0 if success else self.failures + 1
            self.opened_at = self.now if not success else 0.0
            self.holder = None
        elif permit.mode == "closed" and self.state == "closed":
            self.failures = 0 if success else self.failures + 1
            if self.failures >= THRESHOLD:
                self.state, self.opened_at = "open", self.now
        assert [(t.before.value, t.after.value) for t in moved] == (
            [(before, self.state)] if before != self.state else []
        )

    @invariant()
    def journal_agrees(self) -> None:
        view = self.breaker.view()
        assert view.state == BreakerState(self.state)
        if self.state == "open":
            assert view.opened_at == self.opened_at
            assert view.remaining(self.now) == max(0.0, self.opened_at + COOLDOWN - self.now)
        if self.state == "half-open":
            assert view.lease_owner == self.holder  # exactly one trial holder
        if self.state == "closed":
            assert view.failures == self.failures < THRESHOLD


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_breaker_state_survives_a_new_connection(tmp_path: Path) -> None:
    now = [100.0]
    with Journal.open(tmp_path, recover=False) as journal:
        breaker = Breaker(journal, "vm:x", threshold=1, cooldown=60, clock=lambda: now[0])
        moved = breaker.record(breaker.acquire("a"), success=False)
        assert [t.after for t in moved] == [BreakerState.OPEN]
    now[0] = 130.0
    with Journal.open(tmp_path, recover=False) as journal:  # a restarted supervisor sees it open
        permit = Breaker(journal, "vm:x", threshold=1, cooldown=60, clock=lambda: now[0]).acquire("b")
        assert permit.mode == "open" and permit.remaining == 30.0


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from win_automation.jobs.journal import Journal
    from win_automation.jobs.breaker import Breaker
    from win_automation.jobs import supervision
    data, owner, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    with Journal.open(data, recover=False) as journal:
        trial = Breaker(journal, "vm:shared", threshold=1, cooldown=0.01).acquire(owner).mode
        claim = supervision.claim(journal, vm="vm:shared", check="aloha_server", action="aloha_server",
                                  owner=owner, ceiling=5, lease=60)
    print(trial, claim.outcome)
    """
)


def test_two_processes_one_trial_and_one_remediation(tmp_path: Path) -> None:
    with Journal.open(tmp_path, recover=False) as journal:
        breaker = Breaker(journal, "vm:shared", threshold=1, cooldown=0.01)
        breaker.record(breaker.acquire("setup"), success=False)  # open; its cooldown is over at once
    for round_ in range(3):
        if round_:  # back to open, claims finished, for the next race
            with Journal.open(tmp_path, recover=False) as journal, journal._write() as conn:
                conn.execute("UPDATE breakers SET state='open', opened_at=0, lease_owner=NULL")
                conn.execute("UPDATE remediations SET finished_at=1, outcome='repaired'")
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(tmp_path), owner, str(start)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for owner in ("p1", "p2")
        ]
        answers = sorted(p.communicate(timeout=30)[0].split() for p in procs)
        assert all(p.returncode == 0 for p in procs)
        modes = sorted(a[0] for a in answers)
        claims = sorted(a[1] for a in answers)
        assert modes == ["open", "trial"], answers  # exactly one half-open trial
        assert claims == ["busy", "claimed"], answers  # never the same remediation twice


def test_remediation_ceiling_per_hour(tmp_path: Path) -> None:
    with Journal.open(tmp_path, recover=False) as journal:
        for i in range(2):
            claim = supervision.claim(
                journal,
                vm="v",
                check="aloha_server",
                action="a",
                owner="o",
                ceiling=2,
                lease=60,
                now=1000.0 + i,
            )
            assert claim.outcome == "claimed" and claim.claim_id is not None
            supervision.finish(journal, claim.claim_id, "failed", now=1000.5 + i)
        over = supervision.claim(
            journal, vm="v", check="aloha_server", action="a", owner="o", ceiling=2, lease=60, now=1010.0
        )
        assert over.outcome == "ceiling" and "needs a person" in over.detail
        later = supervision.claim(
            journal,
            vm="v",
            check="aloha_server",
            action="a",
            owner="o",
            ceiling=2,
            lease=60,
            now=1000.0 + 3601.5,
        )
        assert later.outcome == "claimed"  # an hour later the ceiling has room again
