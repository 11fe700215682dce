"""The supervisor's circuit breaker over a VM, kept in the journal so that it survives restarts and
is shared by every process that supervises the VM (the CLI loop, `--once` from a timer, the
Hatchet cron workflow on a worker).

States (pybreaker's names): `closed` (passes may remediate), `open` (no remediation until
`cooldown` seconds after the wall-clock `opened_at`), `half-open` (one trial pass, held by a lease).

    breaker = Breaker(journal, "vm:localhost:22555", threshold=3, cooldown=60.0)
    permit = breaker.acquire(owner)          # closed / trial / open (with the time left)
    ... run the pass; remediate only when permit.remediate ...
    transitions = breaker.record(permit, success=all_checks_passed)

- closed: each failed pass counts; `threshold` consecutive failures open it; a success resets.
- open: `acquire` answers `open` with the seconds left; once the cooldown has passed, the first
  `acquire` moves it to half-open and holds the trial lease (`lease` seconds): that caller's pass
  is the trial. Anyone else meanwhile gets `open` (a trial is in progress elsewhere).
- half-open: the trial's success closes it, its failure opens it again (a fresh `opened_at`).
  A trial whose holder is gone is taken over at once when the holder was a process of this host
  (an owner `host:pid:...`; its start time is kept with the lease, so a reused pid is not taken
  for it), otherwise once its lease has expired.

The row is a cache of recent failures, so it heals itself rather than stop the supervisor: a row
the code cannot read (an unknown state, a count or a time that is not one) is reset to closed, and
a time in the future (the clock stepped back) is moved to now, so a cooldown or a lease never lasts
longer than configured; each with one warning naming the breaker and what was wrong.

Every read-and-change is one `BEGIN IMMEDIATE` transaction (a plain BEGIN in WAL mode can fail
with SQLITE_BUSY despite the busy timeout), so two processes never both hold the trial. Times are
wall-clock (`clock`, injectable for tests), since they must mean the same in every process.
"""

from __future__ import annotations

import logging
import math
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from win_automation.jobs.journal import Journal
from win_automation.jobs.owners import process_alive, process_start

log = logging.getLogger(__name__)
TRIAL_LEASE = 600.0
START = "|start="  # after the owner in lease_owner: the holder process's start time


def _local_pid(owner: str) -> int | None:
    """The pid of an owner `host:pid:...` of this host; None for any other owner."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def _holder(owner: str) -> str:
    """What lease_owner keeps for `owner`: the owner, and the start time of its process."""
    pid = _local_pid(owner)
    start = process_start(pid) if pid is not None else None
    return owner if start is None else f"{owner}{START}{start}"


def _owner(holder: str | None) -> str | None:
    return None if holder is None else holder.partition(START)[0]


def _holder_gone(holder: str) -> bool:
    """True when the lease holder was a process of this host that has exited."""
    owner, _, start = holder.partition(START)
    pid = _local_pid(owner)
    return pid is not None and not process_alive(pid, start or None)


def _unreadable(row: sqlite3.Row) -> str | None:
    """What makes a breaker row unreadable (written by hand, another version, a bad disk), or None."""
    if row["state"] not in {state.value for state in BreakerState}:
        return f"state {row['state']!r} is not closed, open or half-open"
    if not isinstance(row["failures"], int) or row["failures"] < 0:
        return f"failures {row['failures']!r} is not a count"
    for column in ("opened_at", "lease_until"):
        value = row[column]
        if value is not None and (not isinstance(value, int | float) or math.isnan(value)):
            return f"{column} {value!r} is not a time"
    if row["lease_owner"] is not None and not isinstance(row["lease_owner"], str):
        return f"lease_owner {row['lease_owner']!r} is not an owner"
    return None


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class Transition:
    breaker: str
    before: BreakerState
    after: BreakerState
    at: float
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"from": self.before.value, "to": self.after.value, "at": self.at, "reason": self.reason}


@dataclass(frozen=True)
class Permit:
    """What this pass may do: `closed` and `trial` remediate, `open` only looks."""

    mode: Literal["closed", "trial", "open"]
    owner: str
    remaining: float = 0.0
    transitions: tuple[Transition, ...] = ()
    holder: str | None = None  # open while half-open: the owner of the trial pass

    @property
    def remediate(self) -> bool:
        return self.mode != "open"


@dataclass(frozen=True)
class BreakerView:
    name: str
    state: BreakerState
    failures: int
    opened_at: float | None
    lease_owner: str | None
    lease_until: float | None
    cooldown: float

    def remaining(self, now: float) -> float:
        if self.state != BreakerState.OPEN or self.opened_at is None:
            return 0.0
        return min(self.cooldown, max(0.0, self.opened_at + self.cooldown - now))

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "opened_at": self.opened_at,
            "cooldown_left_seconds": round(self.remaining(now), 1),
            "trial_owner": self.lease_owner if self.state == BreakerState.HALF_OPEN else None,
        }


class Breaker:
    def __init__(
        self,
        journal: Journal,
        name: str,
        *,
        threshold: int,
        cooldown: float,
        lease: float = TRIAL_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.lease = lease
        self.clock = clock

    def _row(self, conn: sqlite3.Connection, now: float) -> sqlite3.Row:
        conn.execute(
            "INSERT OR IGNORE INTO breakers (name, state, failures, updated_at) VALUES (?, ?, 0, ?)",
            (self.name, BreakerState.CLOSED.value, now),
        )
        row: sqlite3.Row = conn.execute("SELECT * FROM breakers WHERE name = ?", (self.name,)).fetchone()
        problem = _unreadable(row)
        if problem is not None:
            self._warn(f"unreadable row ({problem}): reset to closed")
            self._set(
                conn, now, state="closed", failures=0, opened_at=None, lease_owner=None, lease_until=None
            )
        elif row["state"] == BreakerState.OPEN and (row["opened_at"] or 0.0) > now:
            self._warn(
                f"opened_at is {row['opened_at'] - now:.0f}s in the future (clock stepped back?): set to now"
            )
            self._set(conn, now, opened_at=now)
        elif row["state"] == BreakerState.HALF_OPEN and (row["lease_until"] or 0.0) > now + self.lease:
            self._warn(
                f"the trial lease ends {row['lease_until'] - now:.0f}s from now (clock stepped back?): capped"
            )
            self._set(conn, now, lease_until=now + self.lease)
        else:
            return row
        row = conn.execute("SELECT * FROM breakers WHERE name = ?", (self.name,)).fetchone()
        return row

    def _warn(self, what: str) -> None:
        log.warning("breaker %s: %s", self.name, what, extra={"op": "supervisor.breaker"})

    def _set(self, conn: sqlite3.Connection, now: float, **values: object) -> None:
        columns = ", ".join(f"{key} = ?" for key in values)
        conn.execute(
            f"UPDATE breakers SET {columns}, updated_at = ? WHERE name = ?",
            (*values.values(), now, self.name),
        )

    def _move(
        self,
        conn: sqlite3.Connection,
        now: float,
        before: str,
        after: BreakerState,
        reason: str,
        **values: object,
    ) -> Transition:
        self._set(conn, now, state=after.value, **values)
        return Transition(self.name, BreakerState(before), after, now, reason)

    def view(self) -> BreakerView:
        now = self.clock()
        with self.journal._write() as conn:  # the journal's own transaction helper (same package)
            row = self._row(conn, now)
        return BreakerView(
            self.name,
            BreakerState(row["state"]),
            int(row["failures"]),
            row["opened_at"],
            _owner(row["lease_owner"]),
            row["lease_until"],
            self.cooldown,
        )

    def acquire(self, owner: str) -> Permit:
        """What the pass of `owner` may do now; takes the half-open trial when it is due."""
        now = self.clock()
        with self.journal._write() as conn:
            row = self._row(conn, now)
            state = row["state"]
            if state == BreakerState.CLOSED:
                return Permit("closed", owner)
            if state == BreakerState.OPEN:
                left = float(row["opened_at"] or 0.0) + self.cooldown - now
                if left > 0:
                    return Permit("open", owner, remaining=left)
                moved = self._move(
                    conn,
                    now,
                    state,
                    BreakerState.HALF_OPEN,
                    "cooldown over: trial pass",
                    lease_owner=_holder(owner),
                    lease_until=now + self.lease,
                )
                return Permit("trial", owner, transitions=(moved,))
            # half-open: the trial belongs to its lease holder until the lease expires or the
            # holder (a process of this host) is gone
            holder = row["lease_owner"]
            if holder is None or _owner(holder) == owner or float(row["lease_until"] or 0.0) <= now:
                pass
            elif _holder_gone(holder):
                self._warn(f"the trial's holder {_owner(holder)} is gone: {owner} takes the trial over")
            else:
                return Permit("open", owner, holder=_owner(holder))
            self._set(conn, now, lease_owner=_holder(owner), lease_until=now + self.lease)
            return Permit("trial", owner)

    def record(self, permit: Permit, *, success: bool) -> list[Transition]:
        """Count the pass's result; the transitions it caused (none when another process moved
        the breaker since `permit`, or the pass only looked)."""
        if permit.mode == "open":
            return []
        now = self.clock()
        with self.journal._write() as conn:
            row = self._row(conn, now)
            state = row["state"]
            if permit.mode == "trial":
                if state != BreakerState.HALF_OPEN or _owner(row["lease_owner"]) != permit.owner:
                    return []  # the lease expired and another process took the trial over
                if success:
                    reason = "trial pass succeeded"
                    return [
                        self._move(
                            conn,
                            now,
                            state,
                            BreakerState.CLOSED,
                            reason,
                            failures=0,
                            opened_at=None,
                            lease_owner=None,
                            lease_until=None,
                        )
                    ]
                return [
                    self._move(
                        conn,
                        now,
                        state,
                        BreakerState.OPEN,
                        "trial pass failed",
                        failures=int(row["failures"]) + 1,
                        opened_at=now,
                        lease_owner=None,
                        lease_until=None,
                    )
                ]
            if state != BreakerState.CLOSED:
                return []
            if success:
                if row["failures"]:
                    self._set(conn, now, failures=0)
                return []
            failures = int(row["failures"]) + 1
            if failures >= self.threshold:
                reason = f"{failures} consecutive failed passes"
                return [
                    self._move(conn, now, state, BreakerState.OPEN, reason, failures=failures, opened_at=now)
                ]
            self._set(conn, now, failures=failures)
            return []
