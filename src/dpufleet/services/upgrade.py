"""Rolling upgrades of a service's instances: a few DPUs at a time, gated on readiness, rolled back on failure.

A service's revision is `<restart digest>.<config digest>` (services/desired.py). When its spec asks for
another revision than the one its instances run (`status.upgrade.currentRevision`), the controller calls
`advance` on every visit; it is pure (no store, no clock of its own), so the rules are tested alone:

- every DPU the service holds starts *held*: the DPU keeps running the current revision (its desired
  instance is built from `status.upgrade.template`, the fields the current revision ran with; the
  others from `updateTemplate`: a DPU never runs a spec this function has not seen);
- at most `maxUnavailable` DPUs are *in flight* at once: released from held, their runtime restarts the
  instance at the new revision (or, for a config-only change, rewrites the files and reloads it);
- an in-flight instance is *updated* once its runtime reports it Running and ready at the new revision,
  without a restart, for `minReadySeconds`; it *failed* when reported Failed or restarted at the new
  revision, or when not ready `progressDeadlineSeconds` after its upgrade began. A failed DPU goes back
  to the current revision at once;
- `maxFailures` failed instances stop the upgrade: with `autoRollback` every DPU goes back to the current
  revision (phase RolledBack, until the spec changes again: `dpufleet service undo` or a fix), without
  it nothing more moves (Halted);
- a service that depends on another (`dependsOn`) does not start new batches while that one upgrades
  (Waiting): cascades follow the dependency graph;
- a held DPU with no room for the new revision's resources (the scheduler could not charge them there)
  stays held, on the current revision and its charge, and the message says so, until room is made;
- `paused` starts no new batch (Paused): the instances in flight finish and are checked as usual,
  failures still count, and a change of revision still resets the upgrade; clearing it goes on;
- the spec asking for the current revision again (an undo) ends the upgrade: held DPUs stay, the others
  go back. A new revision while one rolls starts over from the current one; DPUs already off it are in
  flight to the newest at once. An instance placed during an upgrade runs the new revision and is
  checked like the others (after a rollback: the current one).

When every DPU is updated the new revision becomes the current one (phase Complete).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..api.kinds import UpgradeStatus, UpgradeStrategy, resolve_limit
from ..api.kinds.services import UpgradeFailure, UpgradeInFlight
from ..api.meta import isotime

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Seen:
    """What a DPU's runtime last reported of the service's instance there."""

    revision: str
    config_revision: str | None
    phase: str
    ready: bool
    restarts: int
    reason: str | None = None

    def at(self, revision: str) -> bool:
        restart, _, config = revision.partition(".")
        return self.revision == restart and (self.config_revision is None or self.config_revision == config)


@dataclass
class Step:
    upgrade: UpgradeStatus
    events: list[tuple[str, str, EventType]] = field(default_factory=list)

    @property
    def rolling(self) -> bool:
        """Still moving: look again soon."""
        u = self.upgrade
        return u.phase in ("Progressing", "Waiting") or (u.phase == "Paused" and bool(u.inFlight))


def short(revision: str) -> str:
    restart, _, config = revision.partition(".")
    return f"{restart[:8]}.{config[:8]}"


def _since(start: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(start)).total_seconds()


def advance(
    upgrade: UpgradeStatus | None,
    target: str,
    template: dict[str, Any],
    strategy: UpgradeStrategy,
    scheduled: list[str],
    seen: Mapping[str, Seen],
    now: datetime,
    dependency_upgrading: str | None = None,
    no_room: Mapping[str, str] | None = None,
    busy: Mapping[str, str] | None = None,
) -> Step:
    """The upgrade's next state for a service whose spec asks for revision `target` (see the module doc).
    `no_room`: held DPUs that cannot take the new revision's resources (DPU -> why): they stay held.
    `busy`: held DPUs upgrading as many other services as they allow at once (DPU -> why): they wait."""
    stamp = isotime(now)
    if upgrade is None:
        return Step(
            UpgradeStatus(currentRevision=target, updateRevision=target, template=template, updateTemplate=template)
        )
    u = upgrade.model_copy(deep=True)
    step = Step(u)
    dpus = set(scheduled)
    u.held = [d for d in u.held if d in dpus]
    u.inFlight = {d: f for d, f in u.inFlight.items() if d in dpus}
    u.updated = [d for d in u.updated if d in dpus]
    u.failed = [f for f in u.failed if f.dpu in dpus]

    if target != u.updateRevision:
        if target == u.currentRevision:
            if u.phase != "Complete":
                step.events.append(
                    ("UpgradeUndone", f"back on revision {short(target)}: the spec asks for the current one", "Normal")
                )
            _complete(u, target, template)
            u.message = None
            return step
        off_current = sorted({*u.inFlight, *u.updated})
        u.updateRevision, u.phase, u.startedAt, u.rolledBackRevision = target, "Progressing", stamp, None
        u.held = sorted(dpus - set(off_current))
        u.inFlight = {d: UpgradeInFlight(startedAt=stamp) for d in off_current}
        u.updated, u.failed = [], []
        step.events.append(
            (
                "UpgradeStarted",
                f"revision {short(u.currentRevision)} -> {short(target)}: {len(dpus)} instance(s), "
                f"at most {resolve_limit(strategy.maxUnavailable, len(dpus))} at a time",
                "Normal",
            )
        )
    u.updateTemplate = template  # the spec's (a field no revision covers may have changed: restartPolicy)
    if u.phase == "Complete":
        u.template = template
        return step

    tracked = {*u.held, *u.inFlight, *u.updated, *(f.dpu for f in u.failed)}
    new = sorted(dpus - tracked)
    if u.phase in ("RolledBack", "Halted"):
        u.held = sorted({*u.held, *new})
        return step
    for dpu in new:
        u.inFlight[dpu] = UpgradeInFlight(startedAt=stamp)

    _check_in_flight(u, target, strategy, seen, now, stamp)
    total = len(dpus)
    if u.failed and len(u.failed) >= resolve_limit(strategy.maxFailures, total):
        _stop(step, strategy, total)
        return step
    if dependency_upgrading is not None:
        u.phase = "Waiting"
        u.message = f"waiting for service {dependency_upgrading!r} to finish its upgrade; {_progress(u, total)}"
        return step
    if strategy.paused and (u.held or u.inFlight):
        if u.phase != "Paused":
            step.events.append(("UpgradePaused", f"paused: {_progress(u, total)}", "Normal"))
        u.phase = "Paused"
        u.message = f"paused ({len(u.inFlight)} in flight finish, {len(u.held)} held): {_progress(u, total)}"
        return step
    u.phase = "Progressing"
    slots = resolve_limit(strategy.maxUnavailable, total) - len(u.inFlight)
    waiting = {d: why for d, why in (no_room or {}).items() if d in u.held}
    queued = {d: why for d, why in (busy or {}).items() if d in u.held and d not in waiting}
    movable = [d for d in u.held if d not in waiting and d not in queued]
    if slots > 0 and movable:
        batch = movable[:slots]
        u.held = [d for d in u.held if d not in batch]
        for dpu in batch:
            u.inFlight[dpu] = UpgradeInFlight(startedAt=stamp)
        names = ", ".join(batch[:5]) + (f" and {len(batch) - 5} more" if len(batch) > 5 else "")
        step.events.append(("Upgrading", f"upgrading {names} ({len(u.updated)}/{total} done)", "Normal"))
    if not u.held and not u.inFlight:
        if u.failed:
            u.phase = "Halted"
            u.message = (
                f"{len(u.failed)} instance(s) failed the upgrade and run the current revision "
                f"({u.failed[0].dpu}: {u.failed[0].reason}); fix the spec or `dpufleet service undo`"
            )
            step.events.append(("UpgradeHalted", u.message, "Warning"))
            return step
        step.events.append(
            (
                "Upgraded",
                f"all {total} instance(s) run revision {short(target)} (was {short(u.currentRevision)})",
                "Normal",
            )
        )
        u.previousRevision, u.previousTemplate = u.currentRevision, u.template
        _complete(u, target, template)
        u.message = f"{total} instance(s) upgraded"
        return step
    u.message = _progress(u, total)
    if waiting:
        first = min(waiting)
        u.message += (
            f"; {len(waiting)} held: the new resources do not fit there ({first}: {waiting[first]}); "
            "they keep the current revision and its charge until room is made"
        )
    if queued:
        first = min(queued)
        u.message += f"; {len(queued)} wait for their DPU ({first}: {queued[first]})"
    return step


def _check_in_flight(
    u: UpgradeStatus, target: str, strategy: UpgradeStrategy, seen: Mapping[str, Seen], now: datetime, stamp: str
) -> None:
    for dpu in sorted(u.inFlight):
        flight = u.inFlight[dpu]
        report = seen.get(dpu)
        at_target = report is not None and report.at(target)
        reason: str | None = None
        if report is not None and at_target and (report.phase == "Failed" or report.restarts > 0):
            reason = report.reason or ("failed" if report.phase == "Failed" else f"restarted {report.restarts} time(s)")
        elif report is not None and at_target and report.phase == "Running" and report.ready:
            flight.readySince = flight.readySince or stamp
            if _since(flight.readySince, now) >= strategy.minReadySeconds:
                del u.inFlight[dpu]
                u.updated = sorted({*u.updated, dpu})
            continue
        else:
            flight.readySince = None
            if _since(flight.startedAt, now) > strategy.progressDeadlineSeconds:
                where = f"{report.phase} at revision {report.revision[:8]}" if report is not None else "no report"
                reason = f"not ready {strategy.progressDeadlineSeconds}s after its upgrade began ({where})"
        if reason is not None:
            del u.inFlight[dpu]
            u.failed.append(UpgradeFailure(dpu=dpu, reason=reason))


def _stop(step: Step, strategy: UpgradeStrategy, total: int) -> None:
    u = step.upgrade
    first = u.failed[0]
    what = f"{len(u.failed)} instance(s) failed revision {short(u.updateRevision)} ({first.dpu}: {first.reason})"
    if strategy.autoRollback:
        u.phase, u.rolledBackRevision = "RolledBack", u.updateRevision
        u.held = sorted({*u.held, *u.inFlight, *u.updated, *(f.dpu for f in u.failed)})
        u.inFlight, u.updated = {}, []
        u.message = f"{what}; every instance is back on revision {short(u.currentRevision)}"
        step.events.append(("RolledBack", u.message, "Warning"))
    else:
        u.phase = "Halted"
        u.held = sorted({*u.held, *u.inFlight})
        u.inFlight = {}
        u.message = f"{what}; the upgrade is halted ({len(u.updated)}/{total} upgraded)"
        step.events.append(("UpgradeHalted", u.message, "Warning"))


def _complete(u: UpgradeStatus, target: str, template: dict[str, Any]) -> None:
    u.phase, u.currentRevision, u.updateRevision = "Complete", target, target
    u.template = u.updateTemplate = template
    u.held, u.inFlight, u.updated, u.failed, u.rolledBackRevision = [], {}, [], [], None


def _progress(u: UpgradeStatus, total: int) -> str:
    return f"{len(u.updated)}/{total} upgraded, {len(u.inFlight)} in flight, {len(u.failed)} failed"


def expected_revision(upgrade: UpgradeStatus, dpu: str) -> str:
    """The revision the DPU should run now: the current one while held or after failing, else the update."""
    if dpu in upgrade.held or any(f.dpu == dpu for f in upgrade.failed):
        return upgrade.currentRevision
    return upgrade.updateRevision
