"""Step conditions and the Ready summary.

Each step of a controller owns one condition type (for example `Reachable`,
`Inventoried`). Ready is computed from them: True when every step is True,
otherwise False with the reason and message of the most severe failing step,
so `dpufleet get` tells a user what is wrong without reading logs.
"""

from __future__ import annotations

from typing import Any

from ..api.meta import Condition, ConditionStatus, Severity, isotime, now

READY = "Ready"
_RANK = {Severity.ERROR: 3, Severity.WARNING: 2, Severity.INFO: 1, None: 2}


def get_condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            result: dict[str, Any] = cond
            return result
    return None


def set_condition(
    status: dict[str, Any],
    type_: str,
    value: bool | ConditionStatus,
    reason: str,
    message: str = "",
    *,
    severity: Severity | None = None,
    generation: int | None = None,
) -> bool:
    """Set a condition in a status dict. lastTransitionTime changes only when the status flips.

    Returns True if anything changed.
    """
    if isinstance(value, bool):
        value = ConditionStatus.TRUE if value else ConditionStatus.FALSE
    if value == ConditionStatus.TRUE:
        severity = None
    elif severity is None:
        severity = Severity.WARNING
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    existing = get_condition(status, type_)
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        severity=severity,
        observedGeneration=generation,
        lastTransitionTime=(
            existing["lastTransitionTime"]
            if existing and existing.get("status") == value and existing.get("lastTransitionTime")
            else isotime(now())
        ),
    ).model_dump(mode="json", exclude_none=True)
    if existing == new:
        return False
    if existing is None:
        conditions.append(new)
    else:
        conditions[conditions.index(existing)] = new
    return True


def summarize_ready(status: dict[str, Any], steps: list[str], generation: int | None = None) -> bool:
    """Compute Ready from the given step conditions; a missing step counts as Unknown (pending)."""
    worst: tuple[int, dict[str, Any]] | None = None
    pending: str | None = None
    for step in steps:
        cond = get_condition(status, step)
        if cond is None or cond.get("status") == ConditionStatus.UNKNOWN:
            pending = pending or step
            continue
        if cond.get("status") == ConditionStatus.FALSE:
            rank = _RANK.get(Severity(cond["severity"]) if cond.get("severity") else None, 2)
            if worst is None or rank > worst[0]:
                worst = (rank, cond)
    if worst is not None:
        cond = worst[1]
        return set_condition(
            status,
            READY,
            False,
            cond.get("reason", cond["type"]),
            f"{cond['type']}: {cond.get('message', '')}".rstrip(": "),
            severity=Severity(cond["severity"]) if cond.get("severity") else Severity.WARNING,
            generation=generation,
        )
    if pending is not None:
        return set_condition(
            status,
            READY,
            ConditionStatus.UNKNOWN,
            f"{pending}Pending",
            f"waiting for {pending}",
            severity=Severity.INFO,
            generation=generation,
        )
    return set_condition(status, READY, True, "AllStepsSucceeded", generation=generation)
