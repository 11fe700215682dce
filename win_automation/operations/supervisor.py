"""One supervisor pass: check, repair what failed (when the breaker allows), check again, record.

    report = run_pass(config, vm=ctx.vm, owner="host:pid", forced=failpoints())

The pass runs the checks in order (operations.checks). For each failed check with a repair, when
the VM's circuit breaker (jobs.breaker) lets this pass remediate: claim the remediation in the
journal (jobs.supervision: never two supervisors on the same check at once, at most
`supervisor.remediation_ceiling` per check per hour, then "needs a person" with the reason),
check again under the claim (another supervisor may just have repaired it), then the firewall
rules (once per pass), the service's start command, and a bounded wait for the check to pass.
The breaker counts the pass (all checks pass or skipped = success); each check's result goes to
the journal for `supervisor status`; counters per check result and remediation and the breaker
state go to metrics. The report holds every check, remediation and breaker transition.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from win_automation import metrics
from win_automation.config import Config
from win_automation.errors import WinAutomationError
from win_automation.jobs import supervision
from win_automation.jobs.breaker import Breaker, BreakerState, Permit
from win_automation.jobs.journal import Journal
from win_automation.jobs.locks import vm_lock
from win_automation.operations import remediation
from win_automation.operations.checks import CHECKS, CheckResult, run_check, run_checks
from win_automation.operations.vm import Vm

log = logging.getLogger(__name__)
STATUSES = ("pass", "fail", "skipped")
ACTIONS = ("firewall", "aloha_server", "aloha_client", "playwright")
BREAKER_LEVEL = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
COUNTERS = (
    *(f"supervisor_check_{name}_{status}_total" for name in CHECKS for status in STATUSES),
    *(f"supervisor_remediation_{action}_total" for action in ACTIONS),
    "supervisor_remediations_failed_total",
    "supervisor_breaker_state",
)
metrics.declare(*COUNTERS)  # also declared by the supervisor-pass workflow; run_pass may run alone


@dataclass
class PassReport:
    vm: str
    owner: str
    started_at: float
    failpoints: list[str]
    checks: list[CheckResult] = field(default_factory=list)
    remediations: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    breaker: dict[str, Any] = field(default_factory=dict)
    mode: str = "closed"
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def breaker_open(self) -> bool:
        return self.mode == "open" and not self.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "owner": self.owner,
            "ok": self.ok,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "failpoints": self.failpoints,
            "mode": self.mode,
            "checks": [c.as_dict() for c in self.checks],
            "remediations": self.remediations,
            "breaker": self.breaker,
            "transitions": self.transitions,
        }


def breaker_for(journal: Journal, config: Config, clock: Callable[[], float] = time.time) -> Breaker:
    sup = config.supervisor
    name = f"vm:{config.ssh.vm_key}"
    return Breaker(journal, name, threshold=sup.breaker_threshold, cooldown=sup.breaker_cooldown, clock=clock)


def run_pass(
    config: Config,
    *,
    vm: Vm,
    owner: str,
    forced: frozenset[str] = frozenset(),
    clock: Callable[[], float] = time.time,
) -> PassReport:
    report = PassReport(vm.key, owner, clock(), sorted(forced))
    log.info(
        "supervisor pass",
        extra={"op": "supervisor.pass", "vm": vm.key, "failpoints": ",".join(sorted(forced)) or "none"},
    )
    results = run_checks(config, forced=forced)
    with Journal.open(config.data.dir, recover=False) as journal:
        breaker = breaker_for(journal, config, clock)
        permit = breaker.acquire(owner)
        report.mode = permit.mode
        transitions = list(permit.transitions)
        _Repairs(config, vm, journal, permit, report, forced).run(results)
        report.checks = results
        transitions += breaker.record(permit, success=report.ok)
        for result in results:
            repaired = any(
                r["check"] == result.name and r["outcome"] in ("repaired", "failed")
                for r in report.remediations
            )
            supervision.record_result(
                journal,
                vm=vm.key,
                name=result.name,
                status=result.status,
                cause=result.cause,
                fix=result.fix,
                latency_ms=result.latency_ms,
                remediated=repaired,
                now=clock(),
            )
        view = breaker.view()
    report.transitions = [t.as_dict() for t in transitions]
    report.breaker = view.as_dict(clock())
    report.finished_at = clock()
    _count(report, view.state)
    for transition in report.transitions:
        log.warning(
            "breaker %s -> %s",
            transition["from"],
            transition["to"],
            extra={"op": "supervisor.breaker", "vm": vm.key, "reason": transition["reason"]},
        )
    return report


def _count(report: PassReport, state: BreakerState) -> None:
    for result in report.checks:
        if result.status in STATUSES:
            metrics.inc(f"supervisor_check_{result.name}_{result.status}_total")
    for entry in report.remediations:
        if entry["outcome"] in ("repaired", "failed", "applied"):
            metrics.inc(f"supervisor_remediation_{entry['action']}_total")
        if entry["outcome"] == "failed":
            metrics.inc("supervisor_remediations_failed_total")
    metrics.set_value("supervisor_breaker_state", BREAKER_LEVEL[state])


class _Repairs:
    """The remediation half of a pass (one object so the steps share the claim and the report)."""

    def __init__(
        self,
        config: Config,
        vm: Vm,
        journal: Journal,
        permit: Permit,
        report: PassReport,
        forced: frozenset[str],
    ) -> None:
        self.config, self.vm, self.journal, self.permit = config, vm, journal, permit
        self.report, self.forced = report, forced
        self.firewall: list[dict[str, object]] | None = None

    def note(self, check: str, action: str | None, outcome: str, detail: str, **extra: Any) -> None:
        entry = {"check": check, "action": action, "outcome": outcome, "detail": detail, **extra}
        self.report.remediations.append(entry)
        log.info(
            "remediation %s",
            outcome,
            extra={
                "op": "supervisor.remediate",
                "check": check,
                "action": action or "none",
                "detail": detail,
            },
        )

    def run(self, results: list[CheckResult]) -> None:
        """Start what repairs each failed check, in the checks' order; then wait for all of them
        at once (supervisor.remediation_wait), not one after the other."""
        ssh = next((r for r in results if r.name == "ssh"), None)
        started: dict[int, tuple[int, str]] = {}  # index in results -> (claim id, command sent)
        for index, result in enumerate(results):
            if result.status != "fail":
                continue
            if result.repair is None:
                self.note(result.name, None, "needs-a-person", f"no automatic repair: {result.fix}")
            elif not self.permit.remediate:
                holder = self.permit.holder or "another process"
                why = (
                    f"breaker open ({math.ceil(self.permit.remaining)}s left)"
                    if self.permit.remaining > 0
                    else f"breaker half-open: the trial pass runs in {holder}"
                )
                self.note(result.name, None, "breaker-open", f"{why}: nothing repaired")
            elif ssh is not None and ssh.status == "fail":
                self.note(
                    result.name,
                    None,
                    "needs-a-person",
                    "SSH fails, so nothing can be repaired: fix ssh first",
                )
            elif isinstance(begun := self.start(result), CheckResult):
                results[index] = begun
            elif begun is not None:
                started[index] = begun
        if not started:
            return
        names = [results[index].name for index in started]
        finals = remediation.wait_for(names, self.config, self.forced, cancelled=self.vm.cancelled)
        for index, (claim_id, sent) in started.items():
            final = finals[results[index].name]
            outcome = "repaired" if final.status == "pass" else "failed"
            detail = f"sent {sent!r}; the check " + (
                "passes" if final.status == "pass" else f"still fails: {final.cause}"
            )
            supervision.finish(self.journal, claim_id, outcome, detail)
            self.note(final.name, final.name, outcome, detail)
            results[index] = final

    def _ensure_firewall(self) -> list[dict[str, object]]:
        """The VM's firewall rules, applied by one supervisor of this host at a time: two at once
        both ran the script (its creates by -Name race); the second now finds them unchanged.
        It waits for the other as long as its script may run (ssh.command_timeout) and 30 s more
        (Cancelled then: this remediation fails, saying so)."""
        until = time.monotonic() + self.config.ssh.command_timeout + 30.0
        with vm_lock(
            self.config.data.dir,
            self.vm.key,
            owner=self.report.owner,
            cancelled=lambda: time.monotonic() > until,
            kind="firewall",
        ):
            return remediation.ensure_firewall(self.vm, self.config)

    def start(self, failed: CheckResult) -> tuple[int, str] | CheckResult | None:
        """Claim the repair of `failed` and start its service (the firewall first, once a pass):
        (claim id, command sent); the check's new result when it passes again before; None when
        nothing was started (claimed elsewhere, the ceiling, an error: noted)."""
        sup = self.config.supervisor
        # Until finished: the check again, the starts of the later checks (each checked again),
        # the wait, and its last round (every started check once more).
        lease = sup.remediation_wait + (4 + 2 * len(CHECKS)) * sup.check_timeout + 60.0
        claim = supervision.claim(
            self.journal,
            vm=self.vm.key,
            check=failed.name,
            action=failed.name,
            owner=self.report.owner,
            ceiling=sup.remediation_ceiling,
            lease=lease,
        )
        if claim.outcome == "busy":
            self.note(failed.name, None, "busy", claim.detail)
            return None
        if claim.outcome == "ceiling":
            self.note(failed.name, None, "needs-a-person", f"{claim.detail}; last cause: {failed.cause}")
            return None
        assert claim.claim_id is not None
        again = run_check(failed.name, self.config, self.forced)
        if again.status == "pass":
            supervision.finish(
                self.journal, claim.claim_id, supervision.NOT_NEEDED, "passed when checked again"
            )
            self.note(failed.name, None, "not-needed", "passed when checked again (repaired elsewhere?)")
            return again
        try:
            if self.firewall is None:
                self.firewall = self._ensure_firewall()
                changed = [r for r in self.firewall if r.get("action") != "unchanged"]
                self.note(
                    failed.name,
                    "firewall",
                    "applied",
                    f"{len(changed)} of 4 rules changed",
                    rules=self.firewall,
                )
            sent = remediation.start_service(self.vm, self.config, failed.name)
        except WinAutomationError as exc:
            supervision.finish(self.journal, claim.claim_id, "failed", str(exc))
            self.note(failed.name, failed.name, "failed", str(exc))
            return None
        return claim.claim_id, sent


def status(config: Config, now: float | None = None) -> dict[str, Any]:
    """Each check's latest result (stale when older than two intervals), the recent remediations
    and the breaker: `supervisor status`."""
    now = time.time() if now is None else now
    stale_after = 2 * config.supervisor.interval
    with Journal.open(config.data.dir, recover=False) as journal:
        rows = {row["name"]: row for row in supervision.results(journal, config.ssh.vm_key)}
        done = supervision.remediations(journal, config.ssh.vm_key, now - 3600)
        view = breaker_for(journal, config, lambda: now).view()
    checks = []
    for name in CHECKS:
        row = rows.get(name)
        if row is None:
            checks.append({"name": name, "status": "never", "stale": True})
            continue
        age = now - row["checked_at"]
        checks.append({**row, "age_seconds": round(age, 1), "stale": age > stale_after})
    return {
        "vm": config.ssh.vm_key,
        "stale_after_seconds": stale_after,
        "checks": checks,
        "remediations_last_hour": done,
        "breaker": view.as_dict(now),
    }
