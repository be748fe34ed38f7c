"""Remediation: what the health controller does about a diagnosis, under the DPU's policy.

The episode (one failure class from its first diagnosis to recovery), its history and the rate
limits live in `status.remediation`, so escalation survives restarts. It never acts on a held
DPU, one being provisioned, or one whose DPUSet is at its maxUnavailable (`Remediator.guard`).
"""

from __future__ import annotations

import logging
from typing import Any

from ..api.kinds import WORKING_PHASES, FailureClass, Phase, RemediationAction
from ..api.meta import ConditionStatus, Severity, isotime, now
from ..api.patch import json_copy
from ..api.selectors import LabelSelector
from ..drivers.redfish.client import RedfishClient
from ..runtime.conditions import get_condition, set_condition
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..security.audit import AuditEntry, AuditLog
from ..store.store import Store
from . import actions
from .config import CONDITION, HealthConfig, material
from .diagnosis import Diagnosis, parse_time
from .policy import (
    DISRUPTIVE,
    HISTORY_KEPT,
    RESETS,
    EffectivePolicy,
    Episode,
    HistoryEntry,
    Plan,
    RemediationState,
    plan,
)
from .probe import Links

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

SUBJECT = "health-controller"
# Phases in which the provisioner owns the DPU: remediation leaves it alone.
BUSY_PHASES = frozenset({*WORKING_PHASES, Phase.AVAILABLE})


class Remediator:
    """Records a diagnosis in the DPU's remediation state and carries out the step its policy plans."""

    def __init__(self, store: Store, events: EventRecorder) -> None:
        self.store = store
        self.events = events
        self.audit = AuditLog(store)

    async def remediate(
        self,
        dpu: dict[str, Any],
        diagnosis: Diagnosis,
        policy: EffectivePolicy,
        client: RedfishClient | None,
        links: Links | None,
        config: HealthConfig,
    ) -> float | None:
        meta, spec, status = dpu["metadata"], dpu.get("spec") or {}, dpu.get("status") or {}
        state = RemediationState.model_validate(status.get("remediation") or {})
        state.policy = policy.name
        stamp = isotime(now())
        episode = state.episode
        opened = closed = False
        if diagnosis.transient and episode is not None:  # booting on its way back (or not): the episode goes on
            if episode.lastActionAt is not None:
                # the next step's clock starts when the DPU has finished booting from the last one:
                # escalating (say, to a power cycle) in the middle of a slow boot would only restart it
                episode.lastActionAt = stamp
            diagnosis = Diagnosis(
                FailureClass(episode.failureClass),
                f"{diagnosis.message} (still {episode.failureClass})",
                diagnosis.evidence,
            )
        if diagnosis.healthy:
            if episode is not None:
                state.history.append(
                    HistoryEntry(time=stamp, failureClass=episode.failureClass, action="recovered", result="Recovered")
                )
                state.episode = None
                state.logsAfter = stamp
                closed = True
        elif not diagnosis.transient and (episode is None or episode.failureClass != diagnosis.failure_class):
            if episode is not None:
                state.history.append(
                    HistoryEntry(
                        time=stamp,
                        failureClass=episode.failureClass,
                        action="recovered",
                        result="Superseded",
                        message=f"now {diagnosis.failure_class}",
                    )
                )
            state.episode = Episode(failureClass=str(diagnosis.failure_class), since=stamp)
            opened = True

        step_plan: Plan | None = None
        guard: str | None = None
        if state.episode is not None and not diagnosis.transient:
            steps = policy.steps(state.episode.failureClass)
            step_plan = plan(steps, state.episode, state.history, now())
            for index, step, why in step_plan.skipped:
                state.history.append(
                    HistoryEntry(
                        time=stamp,
                        failureClass=state.episode.failureClass,
                        action=step.action,
                        result="Skipped",
                        message=why,
                    )
                )
                state.episode.step = index + 1
            if step_plan.step is not None:
                guard = await self.guard(dpu, step_plan.step.action)
                if guard is None:
                    state.history.append(
                        HistoryEntry(
                            time=stamp,
                            failureClass=state.episode.failureClass,
                            action=step_plan.step.action,
                            result="Issued",
                        )
                    )
                    state.episode.step = step_plan.index + 1
                    state.episode.lastActionAt = stamp
                    if step_plan.step.action in RESETS:
                        state.logsAfter = stamp
                    if step_plan.step.action == RemediationAction.QUARANTINE:
                        state.quarantined = True
        state.history = state.history[-HISTORY_KEPT:]
        note_guard = guard is not None and state.episode is not None and guard not in state.episode.notes
        if note_guard and state.episode is not None and guard is not None:
            state.episode.notes.append(guard)
        if closed and state.quarantined and not spec.get("unschedulable"):
            state.quarantined = False  # an operator lifted the quarantine
        generation = meta.get("generation")
        previous = get_condition(status, CONDITION)

        def mutate(current: dict[str, Any]) -> None:
            since = (current.get("diagnosis") or {}).get("since")
            same = (current.get("diagnosis") or {}).get("failureClass") == str(diagnosis.failure_class)
            current["diagnosis"] = {
                "failureClass": str(diagnosis.failure_class),
                "reason": diagnosis.reason,
                "message": diagnosis.message,
                "since": since if same and since else stamp,
                "checkedAt": stamp,
                "evidence": [e.model_dump() for e in diagnosis.evidence],
            }
            current["remediation"] = state.model_dump(mode="json", exclude_none=True)
            if diagnosis.transient:
                set_condition(
                    current,
                    CONDITION,
                    ConditionStatus.UNKNOWN,
                    "Booting",
                    diagnosis.message,
                    severity=Severity.INFO,
                    generation=generation,
                )
            elif diagnosis.healthy:
                set_condition(current, CONDITION, True, "Healthy", diagnosis.message, generation=generation)
            else:
                evidence = "; ".join(f"{e.source} {e.signal}: {e.value}" for e in diagnosis.evidence)
                set_condition(
                    current,
                    CONDITION,
                    False,
                    str(diagnosis.failure_class),
                    f"{diagnosis.message} [evidence: {evidence}]",
                    severity=Severity.ERROR,
                    generation=generation,
                )

        candidate = json_copy(status)
        mutate(candidate)
        checked = parse_time((status.get("diagnosis") or {}).get("checkedAt"))
        fresh = checked is not None and (now() - checked).total_seconds() < config.refresh_seconds
        if fresh and material(candidate) == material(status):
            updated = dpu  # nothing a reader acts on changed: no write (see HealthConfig.refresh_seconds)
        else:
            updated = await mutate_status(self.store, "DPU", meta["name"], mutate, meta["project"])
        if opened:
            # the evidence the episode opened on, kept in its Event: status.diagnosis moves on with each visit
            # (a DPU booting back from the remediation shows PowerState On while the episode is still open)
            opened_on = "; ".join(f"{e.source} {e.signal}: {e.value}" for e in diagnosis.evidence)
            await self._event(
                updated, str(diagnosis.failure_class), f"{diagnosis.message} [evidence: {opened_on}]", warning=True
            )
            if str(diagnosis.failure_class) in actions.OUT_OF_SERVICE:
                for error in await actions.run_evacuation_hooks(updated, diagnosis):
                    await self._event(updated, "EvacuationHookFailed", error, warning=True)
        if closed:
            was = previous.get("reason") if previous else "unhealthy"
            await self._event(updated, "Recovered", f"healthy again (was {was})")
            actions.clear_alerts(meta["project"], meta["name"])
        if note_guard and guard is not None:
            await self._event(updated, "RemediationPaused", guard, warning=True)
        if step_plan is not None:
            for _index, step, why in step_plan.skipped:
                await self._event(updated, "RemediationSkipped", f"{step.action}: {why}", warning=True)
                await self._audit(updated, str(step.action), "Skipped", why)
            if step_plan.step is not None and guard is None:
                await self._act(updated, step_plan.step.action, diagnosis, client, links)
                return 0.05 if step_plan.index + 1 < len(policy.steps(str(diagnosis.failure_class))) else None
            return step_plan.wait_seconds
        return None

    async def guard(self, dpu: dict[str, Any], action: RemediationAction) -> str | None:
        """Why remediation must not act now, or None."""
        spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
        if spec.get("held"):
            return "the DPU is held (spec.held): no remediation until an operator releases it"
        phase = status.get("phase")
        if phase in BUSY_PHASES:
            return f"the provisioner is working on the DPU (phase {phase}): remediation leaves it to it"
        if action in DISRUPTIVE:
            full = await self.store.call(self._rollout_full, dpu)
            if full:
                return full
        return None

    def _rollout_full(self, dpu: dict[str, Any]) -> str | None:
        """A DPUSet selecting this DPU is at its maxUnavailable, and this DPU is not yet counted in it."""
        meta = dpu["metadata"]
        labels = meta.get("labels") or {}
        if (dpu.get("status") or {}).get("phase") in (Phase.HELD,) or str(
            (dpu.get("status") or {}).get("phase", "")
        ).endswith("Failed"):
            return None  # already counted unavailable by its DPUSet
        if ((dpu.get("status") or {}).get("diagnosis") or {}).get("failureClass") in actions.OUT_OF_SERVICE:
            return None  # out of service by its diagnosis: its DPUSet already counts it (fleet/dpuset.py)
        for dpuset in self.store.list("DPUSet", meta["project"]).items:
            selector = LabelSelector.model_validate(dpuset["spec"].get("selector") or {})
            if not selector.matches(labels):
                continue
            ds_status = dpuset.get("status") or {}
            limit = int(ds_status.get("maxUnavailable") or 0)
            if not limit:
                continue
            members = self.store.list("DPU", meta["project"], selector).items
            remediating = sum(
                1
                for d in members
                if d["metadata"]["name"] != meta["name"]
                and ((d.get("status") or {}).get("remediation") or {}).get("episode")
                and ((d.get("status") or {}).get("phase") not in BUSY_PHASES)
            )
            unavailable = int(ds_status.get("unavailable") or 0) + remediating
            if unavailable >= limit:
                return (
                    f"DPUSet {dpuset['metadata']['name']} has {unavailable} unavailable DPU(s), its maxUnavailable is "
                    f"{limit}: disruptive remediation waits"
                )
        return None

    async def _act(
        self,
        dpu: dict[str, Any],
        action: RemediationAction,
        diagnosis: Diagnosis,
        client: RedfishClient | None,
        links: Links | None,
    ) -> None:
        meta = dpu["metadata"]
        ctx = actions.ActionContext(
            self.store,
            dpu,
            client if links is not None else None,
            links.system if links else None,
            links.reset_manager if links else None,
            diagnosis,
        )
        try:
            result, message = await actions.execute(action, ctx)
        except Exception as exc:
            result, message = "Failed", f"{type(exc).__name__}: {exc}"
        stamp_issued = None

        def mutate(current: dict[str, Any]) -> None:
            nonlocal stamp_issued
            state = RemediationState.model_validate(current.get("remediation") or {})
            for entry in reversed(state.history):
                if entry.action == action and entry.result == "Issued":
                    entry.result, entry.message = result, message
                    stamp_issued = entry.time
                    break
            current["remediation"] = state.model_dump(mode="json", exclude_none=True)

        updated = await mutate_status(self.store, "DPU", meta["name"], mutate, meta["project"])
        reason = "Remediation" + "".join(part.capitalize() for part in str(action).split("-"))
        if action == RemediationAction.QUARANTINE and result == "Succeeded":
            reason = "Quarantined"
            for error in await actions.run_evacuation_hooks(updated, diagnosis):
                await self._event(updated, "EvacuationHookFailed", error, warning=True)
        await self._event(
            updated,
            reason,
            f"{action} for {diagnosis.failure_class}: {result}: {message}",
            warning=result != "Succeeded" or action in (RemediationAction.QUARANTINE, RemediationAction.ALERT),
        )
        await self._audit(updated, str(action), result, f"{diagnosis.failure_class}: {message}")

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")

    async def _audit(self, dpu: dict[str, Any], action: str, result: str, detail: str) -> None:
        meta = dpu["metadata"]
        entry = AuditEntry(
            subject=SUBJECT,
            roles="controller",
            action=f"remediation:{action}",
            kind="DPU",
            project=meta["project"],
            name=meta["name"],
            result=result,
            code=200 if result in ("Succeeded", "Issued") else 409,
            source="controller",
            detail=detail[:500],
        )
        try:
            await self.store.call(self.audit.record, entry)
        except Exception:
            log.exception("could not audit %s on %s", action, meta["name"])
