"""What the supervisor keeps in the journal besides its breaker: the remediation ledger and each
check's latest result (for `supervisor status`).

Remediations are claimed before they run (`claim`), in one `BEGIN IMMEDIATE` transaction that
refuses when another supervisor holds a live claim on the same check of the same VM (`busy`) or
when the check has had `ceiling` remediations in the last hour (`ceiling`: a person is needed).
`finish` records the outcome; a claim whose holder died expires with its lease. A claim that
turned out not to be needed (the check passed when re-checked under the claim) does not count
toward the ceiling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from win_automation.jobs.journal import Journal

HOUR = 3600.0
NOT_NEEDED = "not-needed"


@dataclass(frozen=True)
class Claim:
    outcome: Literal["claimed", "busy", "ceiling"]
    claim_id: int | None = None
    detail: str = ""
    recent: int = 0


def claim(
    journal: Journal,
    *,
    vm: str,
    check: str,
    action: str,
    owner: str,
    ceiling: int,
    lease: float,
    now: float | None = None,
) -> Claim:
    now = time.time() if now is None else now
    with journal._write() as conn:
        held = conn.execute(
            "SELECT owner FROM remediations WHERE vm = ? AND check_name = ? AND finished_at IS NULL"
            " AND lease_until > ? LIMIT 1",
            (vm, check, now),
        ).fetchone()
        if held is not None:
            return Claim("busy", detail=f"another supervisor ({held[0]}) is repairing {check} now")
        (recent,) = conn.execute(
            "SELECT COUNT(*) FROM remediations WHERE vm = ? AND check_name = ? AND started_at > ?"
            " AND (outcome IS NULL OR outcome != ?)",
            (vm, check, now - HOUR, NOT_NEEDED),
        ).fetchone()
        if recent >= ceiling:
            return Claim(
                "ceiling",
                detail=f"{recent} remediations of {check} in the last hour (ceiling"
                f" supervisor.remediation_ceiling = {ceiling}): needs a person",
                recent=int(recent),
            )
        cursor = conn.execute(
            "INSERT INTO remediations (vm, check_name, action, owner, started_at, lease_until)"
            " VALUES (?,?,?,?,?,?)",
            (vm, check, action, owner, now, now + lease),
        )
        return Claim("claimed", claim_id=int(cursor.lastrowid or 0), recent=int(recent))


def finish(journal: Journal, claim_id: int, outcome: str, detail: str = "", now: float | None = None) -> None:
    now = time.time() if now is None else now
    with journal._write() as conn:
        conn.execute(
            "UPDATE remediations SET finished_at = ?, outcome = ?, detail = ? WHERE id = ?",
            (now, outcome, detail[:2000], claim_id),
        )


def remediations(journal: Journal, vm: str, since: float) -> list[dict[str, Any]]:
    rows = journal._query(
        "SELECT check_name, action, owner, started_at, finished_at, outcome, detail FROM remediations"
        " WHERE vm = ? AND started_at > ? ORDER BY id",
        (vm, since),
    )
    return [dict(row) for row in rows]


def record_result(
    journal: Journal,
    *,
    vm: str,
    name: str,
    status: str,
    cause: str,
    fix: str,
    latency_ms: float,
    remediated: bool,
    now: float | None = None,
) -> None:
    """Keep `name`'s latest result, its last success and error and its failure streak."""
    now = time.time() if now is None else now
    failed = status == "fail"
    with journal._write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO check_status (vm, name, status, checked_at) VALUES (?,?,?,?)",
            (vm, name, status, now),
        )
        conn.execute(
            "UPDATE check_status SET status = ?, cause = ?, fix = ?, latency_ms = ?, checked_at = ?,"
            " last_success_at = CASE WHEN ? = 'pass' THEN ? ELSE last_success_at END,"
            " last_error = CASE WHEN ? THEN ? ELSE last_error END,"
            " last_error_at = CASE WHEN ? THEN ? ELSE last_error_at END,"
            " consecutive_failures = CASE WHEN ? THEN consecutive_failures + 1"
            "   WHEN ? = 'pass' THEN 0 ELSE consecutive_failures END,"
            " remediations = remediations + ? WHERE vm = ? AND name = ?",
            (
                status,
                cause,
                fix,
                latency_ms,
                now,
                status,
                now,
                failed,
                cause,
                failed,
                now,
                failed,
                status,
                int(remediated),
                vm,
                name,
            ),
        )


def results(journal: Journal, vm: str) -> list[dict[str, Any]]:
    rows = journal._query("SELECT * FROM check_status WHERE vm = ?", (vm,))
    return [dict(row) for row in rows]
