"""Remediation policy: per failure class an ordered list of steps, and the pure planner that picks the next one.

A remediation *episode* starts when a DPU is diagnosed with a failure class and ends when it
is Healthy again (or its diagnosis changes). Within an episode the steps run in order; step i
is due `after` seconds after the previous step ran (the first: after the diagnosis) or, when
the DPU was booting since (a reset's boot, its agent starting), after it finished booting. A step
whose action ran `maxPerHour` times in the last hour on this DPU is skipped: the failure
escalates to the next step. Counting comes from the history in DPU status, so it survives a
restarted controller. After the last step nothing more happens until the episode ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from ..api.kinds import (
    DEFAULT_POLICY_NAME,
    DEFAULT_RULES,
    RemediationAction,
    RemediationPolicySpec,
    RemediationStep,
    default_spec,
)
from ..api.selectors import LabelSelector

A = RemediationAction

# Actions that take a DPU out of service while they run (they count against a rollout's maxUnavailable).
DISRUPTIVE = frozenset({A.REBOOT, A.POWER_CYCLE, A.HOST_POWER_CYCLE, A.REFLASH})
# Actions after which the BMC's log describes a previous boot.
RESETS = frozenset({A.REBOOT, A.POWER_CYCLE, A.POWER_ON, A.HOST_POWER_CYCLE})
# History results that count against a rate limit (a skipped or deferred step did nothing).
COUNTED = frozenset({"Issued", "Succeeded", "Failed"})
HISTORY_KEPT = 100


@dataclass(frozen=True)
class EffectivePolicy:
    name: str  # the RemediationPolicy object, or "built-in"
    spec: RemediationPolicySpec

    def steps(self, failure_class: str) -> list[RemediationStep]:
        for rule in self.spec.rules:
            if rule.failureClass == failure_class:
                return rule.actions
        return DEFAULT_RULES.get(failure_class, [])


def select_policy(policies: list[dict[str, Any]], labels: dict[str, str]) -> EffectivePolicy:
    """The first RemediationPolicy (by name) whose selector matches the DPU's labels, else the built-in one."""
    for doc in sorted(policies, key=lambda p: p["metadata"]["name"]):
        spec = RemediationPolicySpec.model_validate(doc.get("spec") or {})
        if LabelSelector.model_validate(spec.selector.model_dump()).matches(labels):
            return EffectivePolicy(doc["metadata"]["name"], spec)
    return EffectivePolicy(DEFAULT_POLICY_NAME, default_spec())


class HistoryEntry(BaseModel):
    time: str
    failureClass: str
    action: str  # a RemediationAction, or "recovered"
    result: str  # Issued, Succeeded, Failed, Skipped, NotAvailable, Recovered
    message: str = ""


class Episode(BaseModel):
    failureClass: str
    since: str
    step: int = 0
    lastActionAt: str | None = None
    notes: list[str] = Field(default_factory=list)  # guards already evented in this episode (held, deferred)


class RemediationState(BaseModel):
    """status.remediation: what remediation has done to this DPU (persisted: limits survive restarts)."""

    policy: str | None = None
    episode: Episode | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    logsAfter: str | None = None  # BMC log entries before this describe an earlier boot
    quarantined: bool = False


@dataclass
class Plan:
    """What to do now: `step` to run (its index), or wait `wait_seconds`, or nothing left (`done`)."""

    index: int
    step: RemediationStep | None = None
    wait_seconds: float | None = None
    done: bool = False
    skipped: list[tuple[int, RemediationStep, str]] = field(default_factory=list)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def runs_last_hour(history: list[HistoryEntry], action: str, now: datetime) -> int:
    since = now - timedelta(hours=1)
    return sum(1 for h in history if h.action == action and h.result in COUNTED and _time(h.time) >= since)


def plan(steps: list[RemediationStep], episode: Episode, history: list[HistoryEntry], now: datetime) -> Plan:
    skipped: list[tuple[int, RemediationStep, str]] = []
    index = episode.step
    reference = _time(episode.lastActionAt or episode.since)
    while index < len(steps):
        step = steps[index]
        due = reference + timedelta(seconds=step.after)
        if now < due:
            return Plan(index, wait_seconds=(due - now).total_seconds(), skipped=skipped)
        if step.maxPerHour is not None:
            count = runs_last_hour(history, step.action, now)
            if count >= step.maxPerHour:
                skipped.append((index, step, f"rate limit: {count} in the last hour (max {step.maxPerHour})"))
                index += 1
                continue
        return Plan(index, step=step, skipped=skipped)
    return Plan(index, done=True, skipped=skipped)
