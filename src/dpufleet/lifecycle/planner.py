"""The update planner: from installed to desired component versions, in an order that holds.

Each component of an image declares what it needs (`requires`: another component within
a version range), what it cannot live with (`conflicts`), what must be updated before it
(`after`), and its impact (live, dpu-reset, host-reset). The planner:

1. decides which components change (desired version differs from installed);
2. checks every requirement and conflict against the *final* versions, and against the
   versions in force at the moment each step runs (a component must never run next to
   a version it cannot work with, even briefly);
3. orders the steps topologically: explicit `after` edges, plus "B before A" whenever A
   requires B and B is being updated;
4. merges consecutive steps of the same disruptive impact, so several components share
   one reboot where the order allows.

An impossible request raises Unsatisfiable with every reason in plain words. One desired
version per component (an image pins them), so a topological sort decides; a catalog
offering several candidate versions would need a resolver (resolvelib) on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from ..api.kinds import ComponentRequirement, ImageComponent, UpdateImpact


class Unsatisfiable(Exception):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


_PART = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders firmware versions the way people read them: 32.43.1014 < 32.44.1000,
    BF-24.10-17 < BF-24.10-20; numbers compare as numbers, words as words (after numbers)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in _PART.findall(version))


def compare(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def satisfies(version: str | None, req: ComponentRequirement) -> bool:
    if version is None:
        return False
    if req.minVersion is not None and compare(version, req.minVersion) < 0:
        return False
    return not (req.maxVersion is not None and compare(version, req.maxVersion) > 0)


def describe(req: ComponentRequirement) -> str:
    bounds = []
    if req.minVersion:
        bounds.append(f">= {req.minVersion}")
    if req.maxVersion:
        bounds.append(f"<= {req.maxVersion}")
    return f"{req.component} {' and '.join(bounds) or '(any version)'}"


class StepAction(StrEnum):
    INSTALL = "install"
    REBOOT_DPU = "reboot-dpu"
    RESET_HOST = "reset-host"


@dataclass(frozen=True)
class Step:
    action: StepAction
    component: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    impact: UpdateImpact = UpdateImpact.LIVE
    why: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def dpu_reboots(self) -> int:
        return sum(1 for s in self.steps if s.action == StepAction.REBOOT_DPU)

    @property
    def host_resets(self) -> int:
        return sum(1 for s in self.steps if s.action == StepAction.RESET_HOST)

    @property
    def installs(self) -> list[Step]:
        return [s for s in self.steps if s.action == StepAction.INSTALL]


def plan_update(installed: dict[str, str], desired: list[ImageComponent], *, reinstall: bool = False) -> Plan:
    """The ordered steps from `installed` (component id -> version) to the image's components.

    With `reinstall`, every component of the image is written, also one already at its version
    (provisioning writes the whole image: a re-flash repairs what the version string cannot show).
    """
    reasons: list[str] = []
    by_name: dict[str, ImageComponent] = {}
    for comp in desired:
        if comp.name in by_name:
            reasons.append(f"the image lists component {comp.name} twice")
        by_name[comp.name] = comp
    if reasons:
        raise Unsatisfiable(reasons)
    changing = {n: c for n, c in by_name.items() if reinstall or installed.get(n) != c.version}
    final = {**installed, **{n: c.version for n, c in by_name.items()}}

    for comp in by_name.values():
        for req in comp.requires:
            if not satisfies(final.get(req.component), req):
                have = final.get(req.component)
                source = "the image brings" if req.component in by_name else "the DPU has"
                reasons.append(
                    f"{comp.name} {comp.version} requires {describe(req)}, but {source} "
                    f"{req.component} {have if have is not None else '(not installed)'}"
                )
        for con in comp.conflicts:
            if satisfies(final.get(con.component), con):
                reasons.append(
                    f"{comp.name} {comp.version} conflicts with {describe(con)}, and {con.component} "
                    f"would be {final.get(con.component)}"
                )
        for before in comp.after:
            if before not in by_name and before not in installed:
                reasons.append(f"{comp.name} must be updated after {before}, which neither the image nor the DPU has")
    if reasons:
        raise Unsatisfiable(reasons)

    # edges: u -> v means u is installed before v
    edges: dict[str, set[str]] = {n: set() for n in changing}
    for name, comp in changing.items():
        for before in comp.after:
            if before in changing:
                edges[before].add(name)
        for req in comp.requires:
            if req.component in changing and req.component != name:
                edges[req.component].add(name)
    order = _toposort(changing, edges)

    # no step may run next to a version it cannot work with
    current = dict(installed)
    for name in order:
        comp = changing[name]
        current[name] = comp.version
        for other_name in order:
            other = changing[other_name]
            if current.get(other_name) != other.version:
                continue  # not installed yet: checked when its turn comes
            for req in other.requires:
                if req.component in current and not satisfies(current.get(req.component), req):
                    reasons.append(
                        f"while updating, {other_name} {other.version} would run with {req.component} "
                        f"{current.get(req.component)} but requires {describe(req)}"
                    )
    if reasons:
        raise Unsatisfiable(sorted(set(reasons)))

    return _with_resets(order, changing, installed, [n for n in by_name if n not in changing])


def _toposort(nodes: dict[str, ImageComponent], edges: dict[str, set[str]]) -> list[str]:
    """Kahn's algorithm; among ready components, least disruptive first, then by name (stable plans)."""
    rank = {UpdateImpact.LIVE: 0, UpdateImpact.DPU_RESET: 1, UpdateImpact.HOST_RESET: 2}
    indegree = {n: 0 for n in nodes}
    for targets in edges.values():
        for t in targets:
            indegree[t] += 1
    ready = sorted((n for n, d in indegree.items() if d == 0), key=lambda n: (rank[nodes[n].impact], n))
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for t in sorted(edges[name]):
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
        ready.sort(key=lambda n: (rank[nodes[n].impact], n))
    if len(order) != len(nodes):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        raise Unsatisfiable(
            [f"the update order has a cycle among {', '.join(stuck)} (check their 'after' and 'requires')"]
        )
    return order


def _with_resets(
    order: list[str], changing: dict[str, ImageComponent], installed: dict[str, str], unchanged: list[str]
) -> Plan:
    """Insert one reboot after each run of disruptive installs, as late as the order allows.

    A disruptive component takes effect at the next reboot; a later component that
    requires it must not be installed before that reboot. So a reboot is placed before
    the first install that depends on a pending (installed but not yet active) one, and
    at the end.
    """
    plan = Plan(unchanged=sorted(unchanged))
    pending: dict[str, UpdateImpact] = {}

    def flush(reason: str) -> None:
        if not pending:
            return
        names = ", ".join(sorted(pending))
        if UpdateImpact.HOST_RESET in pending.values():
            plan.steps.append(
                Step(StepAction.RESET_HOST, impact=UpdateImpact.HOST_RESET, why=f"activates {names}{reason}")
            )
        else:
            plan.steps.append(
                Step(StepAction.REBOOT_DPU, impact=UpdateImpact.DPU_RESET, why=f"activates {names}{reason}")
            )
        pending.clear()

    for name in order:
        comp = changing[name]
        needs_active = {r.component for r in comp.requires} | set(comp.after)
        if needs_active & set(pending):
            flush(f" before {name} needs {'them' if len(pending) > 1 else 'it'} running")
        plan.steps.append(
            Step(
                StepAction.INSTALL,
                name,
                installed.get(name),
                comp.version,
                comp.impact,
                why="; ".join(f"requires {describe(r)}" for r in comp.requires),
            )
        )
        if comp.impact != UpdateImpact.LIVE:
            pending[name] = comp.impact
    flush("")
    return plan
