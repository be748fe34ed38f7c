"""DPUSet controller: roll a template (image, flavor) out to the DPUs a selector picks.

Every decision is counted from the store, never from memory, so a restarted control
plane continues where the fleet is and never exceeds its limits (the DPUs are read through a
mirror of their counted fields, runtime/mirror.py: listed from the store at start, at each
resync and after a broken watch, and kept by the store's change feed in between):

- a DPU is *updated* when its spec carries the template; *converged* when it is also
  Ready running it; *unavailable* while it is being provisioned, failed or held, or
  updated but not converged yet (the window before the provisioner picks it up counts);
- each pass updates at most (maxUnavailable - unavailable) more DPUs, in name order,
  never more than maxUnavailablePerHost of one host at once;
- failed DPUs count against maxFailures: past it the rollout halts with a reason;
- Canary updates `canary` DPUs first and holds; promoting is changing the strategy to
  RollingUpdate; a failed canary halts it;
- OnDelete never updates a DPU by itself; `spec.paused` stops new updates;
- `spec.aborted` stops new updates and puts every updated DPU that has not begun writing back
  on the image it runs (its spec reverted; one in PreparingHost or StagingImage is also aborted
  in provisioning); a DPU that is writing or rebooting finishes, a flash is never interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from ..api.errors import APIError, Conflict, Gone, NotFound
from ..api.kinds import FAILED_PHASES, WORKING_PHASES, FailureClass, Phase
from ..api.kinds.fleet import resolve_limit
from ..api.meta import Severity, now
from ..api.patch import json_copy
from ..api.selectors import LabelSelector
from ..provisioning.controller import ABORT
from ..runtime.conditions import set_condition
from ..runtime.controller import DONE, Key, Mapper, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.mirror import FieldMirror
from ..runtime.status import mutate_status
from ..store.store import Change, Store

ROLLOUT_POLL_SECONDS = 2.0
NEWLY_BUSY_SCAN = 2000  # changes a wave's recheck reads at most; more and the wave waits for the next pass
SELECTORS_TTL = 1.0
# Diagnoses under which a DPU does not do its work: it counts as unavailable, so a rollout
# never takes more DPUs down while the health controller is recovering others.
OUT_OF_SERVICE = frozenset(
    {
        FailureClass.OS_HANG,
        FailureClass.KERNEL_CRASH,
        FailureClass.NIC_FIRMWARE_CRASH,
        FailureClass.POWER_LOSS,
        FailureClass.PCIE_ERROR,
        FailureClass.CORRUPTED_FLASH,
        FailureClass.MEMORY_FAILURE,
    }
)


# Phases in which an updated DPU has not begun writing its new image: an abort can still put it back.
BEFORE_WRITING = frozenset(
    {None, "", Phase.DISCOVERED, Phase.READY, Phase.AVAILABLE, Phase.PREPARING_HOST, Phase.STAGING_IMAGE}
)

# What a recount reads of each selected DPU (the store picks these out: a DPU's whole status, with
# its inventory and conditions, is many times larger and a recount runs up to ten times a second).
COUNTED_FIELDS: list[tuple[str, ...]] = [
    ("spec",),
    ("status", "phase"),
    ("status", "installedImage"),
    ("status", "appliedFlavor"),
    ("status", "host"),
    ("status", "diagnosis", "failureClass"),
    ("status", "provisioning", "componentsDone"),
]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def in_window(windows: list[dict[str, Any]], moment: datetime) -> bool:
    """Whether `moment` (UTC) falls inside one of the windows; a window whose end is before its
    start runs past midnight and belongs to the day it starts on."""
    moment = moment.astimezone(UTC)
    minute = moment.hour * 60 + moment.minute
    today, yesterday = _DAYS[moment.weekday()], _DAYS[(moment.weekday() - 1) % 7]
    for window in windows:
        start = int(window["start"][:2]) * 60 + int(window["start"][3:])
        end = int(window["end"][:2]) * 60 + int(window["end"][3:])
        days = window.get("days") or list(_DAYS)
        if start <= end:
            if today in days and start <= minute < end:
                return True
        elif (today in days and minute >= start) or (yesterday in days and minute < end):
            return True
    return False


def _classify(d: dict[str, Any], template_items: list[tuple[str, Any]], image: str | None) -> tuple[bool, bool, bool]:
    """(updated, converged, unavailable) of one DPU (a counted row or a whole document) for a template:
    unavailable while working, failed or held, out of service by diagnosis, or updated and not yet
    converged."""
    status = d.get("status") or {}
    phase = status.get("phase")
    dpu_spec = d.get("spec") or {}
    is_updated = all(dpu_spec.get(k) == v for k, v in template_items)
    is_converged = is_updated and phase == Phase.READY and (image is None or status.get("installedImage") == image)
    is_busy = (
        phase in WORKING_PHASES
        or phase in FAILED_PHASES
        or phase == Phase.HELD
        or (status.get("diagnosis") or {}).get("failureClass") in OUT_OF_SERVICE
        or (is_updated and not is_converged)
    )
    return is_updated, is_converged, is_busy


class _Tally:
    """One DPUSet's classification of its DPUs, kept between its passes. The mirror puts a new row in
    place of a DPU's row on every change, so a row that is the same object as last pass is counted as
    it was, and only the DPUs that changed are classified again (a set of 1,000 is counted many times
    a second, and classifying every DPU each time was a tenth of the controllers' work in a rollout).
    A set's tally is only used by its own pass: the work queue never hands one key to two workers."""

    def __init__(self, template_items: list[tuple[str, Any]], image: str | None) -> None:
        self.template_items = template_items
        self.image = image
        self.rows: dict[str, dict[str, Any]] = {}
        self.updated: set[str] = set()
        self.converged: set[str] = set()
        self.failed: set[str] = set()
        self.busy: dict[str, dict[str, Any]] = {}

    def count(self, dpus: list[dict[str, Any]]) -> None:
        rows = self.rows
        for d in dpus:
            name = d["metadata"]["name"]
            if rows.get(name) is d:
                continue
            is_updated, is_converged, is_busy = _classify(d, self.template_items, self.image)
            rows[name] = d  # after classifying it: a row is never kept unclassified
            _mark(self.updated, name, is_updated)
            _mark(self.converged, name, is_converged)
            _mark(self.failed, name, is_updated and (d.get("status") or {}).get("phase") in FAILED_PHASES)
            if is_busy:
                self.busy[name] = d
            else:
                self.busy.pop(name, None)
        if len(rows) > len(dpus):  # some left the set (deleted, relabelled, claimed by an older set)
            for name in set(rows) - {d["metadata"]["name"] for d in dpus}:
                del rows[name]
                self.updated.discard(name)
                self.converged.discard(name)
                self.failed.discard(name)
                self.busy.pop(name, None)


def _mark(names: set[str], name: str, member: bool) -> None:
    if member:
        names.add(name)
    else:
        names.discard(name)


def _host(dpu: dict[str, Any]) -> str | None:
    """The host a DPU sits in: as observed (host agent), else as declared."""
    host = (dpu.get("status") or {}).get("host") or (dpu.get("spec") or {}).get("hostRef")
    return str(host) if host else None


def _limit(value: int | str | None, total: int) -> int | None:
    return None if value is None else resolve_limit(value, total)


class DPUSetReconciler(Reconciler):
    kind = "DPUSet"
    workers = 4
    min_interval = 0.05  # DPU changes wake a DPUSet at most twenty times a second...
    RECOUNT_SECONDS_PER_DPU = 0.00005  # ...and a large one less often: a recount looks at every DPU it selects

    def __init__(
        self, store: Store, poll_seconds: float = ROLLOUT_POLL_SECONDS, clock: Callable[[], datetime] = now
    ) -> None:
        self.store = store
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.events = EventRecorder(store, "dpuset-controller")
        self._selector_cache: dict[str, tuple[float, list[tuple[Key, LabelSelector]]]] = {}
        self._sizes: dict[Key, int] = {}  # how many DPUs each set counted last
        self._tallies: dict[Key, _Tally] = {}
        self._listed_sets: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]] = {}  # by project (_sets)
        # the counted fields of every DPU, from the store and kept by its change feed: a set of 1,000 DPUs
        # is counted several times a second, and reading them from the store each time was a tenth of
        # the control plane's work in a rollout
        self._dpus = FieldMirror(store, "DPU", COUNTED_FIELDS)

    def interval(self, key: Key) -> float:
        """A recount reads the counted fields of every selected DPU (about 10 us each): a set of 1,000
        is woken by their changes at most five times a second, one of 500 or fewer ten times."""
        return max(self.min_interval, self._sizes.get(key, 0) * self.RECOUNT_SECONDS_PER_DPU)

    def watches(self) -> dict[str, Mapper]:
        return {"DPU": self._sets_selecting}

    def relisted(self) -> None:
        self._dpus.forget()
        self._tallies.clear()

    def _sets_selecting(self, change: Change) -> list[Key]:
        self._dpus.apply(change)
        sets = self._selectors(change.project)
        if not sets:
            return []
        labels = (change.object().get("metadata") or {}).get("labels") or {}
        return [key for key, selector in sets if selector.matches(labels)]

    def _selectors(self, project: str) -> list[tuple[Key, LabelSelector]]:
        """The project's DPUSets and their selectors, read again at most every SELECTORS_TTL seconds
        (this runs for every DPU change; a DPUSet's own changes wake it directly)."""
        clock = time.monotonic()
        cached = self._selector_cache.get(project)
        if cached is not None and clock - cached[0] < SELECTORS_TTL:
            return cached[1]
        sets = [
            (
                Key(s["metadata"]["project"], s["metadata"]["name"]),
                LabelSelector.model_validate(s["spec"].get("selector") or {}),
            )
            for s in self.store.list("DPUSet", project).items
        ]
        self._selector_cache[project] = (clock, sets)
        return sets

    async def reconcile(self, key: Key) -> Result:
        try:
            dpuset = await self.store.call(self.store.get, "DPUSet", key.name, key.project)
        except NotFound:
            self._sizes.pop(key, None)
            self._tallies.pop(key, None)
            return DONE
        if dpuset["metadata"].get("deletionTimestamp"):
            return DONE
        spec = dpuset["spec"]
        strategy = spec.get("strategy") or {}
        template = {k: v for k, v in (spec.get("template") or {}).items() if v is not None}
        selector = LabelSelector.model_validate(spec.get("selector") or {})
        dpus = await self._dpus.rows(key.project, selector, current=True)  # limits: counted as the store has it
        claimed = await self.store.call(self._claimed_by_older_sets, dpuset)
        if claimed:
            overlap = [d["metadata"]["name"] for d in dpus if d["metadata"]["name"] in claimed]
            dpus = [d for d in dpus if d["metadata"]["name"] not in claimed]
        else:
            overlap = []
        total = len(dpus)
        self._sizes[key] = total

        # only the DPUs that changed since the last pass are classified again (_Tally)
        image = template.get("image")
        template_items = list(template.items())
        tally = self._tallies.get(key)
        if tally is None or tally.template_items != template_items or tally.image != image:
            tally = self._tallies[key] = _Tally(template_items, image)
        tally.count(dpus)
        updated_names, converged_names, busy_names = tally.updated, tally.converged, tally.busy.keys()
        failures = sorted(tally.failed)
        busy = list(tally.busy.values())

        def updated(d: dict[str, Any]) -> bool:
            return d["metadata"]["name"] in updated_names

        def converged(d: dict[str, Any]) -> bool:
            return d["metadata"]["name"] in converged_names

        def unavailable(d: dict[str, Any]) -> bool:
            return d["metadata"]["name"] in busy_names

        max_unavailable = _limit(strategy.get("maxUnavailable", 1), total) or 1
        per_host = strategy.get("maxUnavailablePerHost", 1)
        canary = strategy.get("canary") if strategy.get("type") == "Canary" else None
        max_failures = _limit(strategy.get("maxFailures"), total)
        if canary is not None and max_failures is None:
            max_failures = 1  # a failed canary is the health gate's verdict
        busy_hosts: dict[str, int] = {}
        for d in busy:
            host = _host(d)
            if host:
                busy_hosts[host] = busy_hosts.get(host, 0) + 1

        halted = max_failures is not None and len(failures) >= max_failures
        reason, message = "RollingOut", ""
        if overlap:
            message = f"{len(overlap)} selected DPU(s) belong to an older DPUSet and are left alone: " + ", ".join(
                f"{n} ({claimed[n]})" for n in overlap[:5]
            )
        started: list[str] = []
        if not template:
            reason, message = "NoTemplate", "the template names no image or flavor"
        elif halted:
            reason = "FailureThreshold"
            message = f"{len(failures)} DPU(s) failed ({', '.join(failures[:5])}); the limit is {max_failures}"
        elif spec.get("aborted"):
            reason = "Aborted"
            message = await self._abort(dpuset, dpus, updated, converged)
        elif spec.get("paused"):
            reason, message = "Paused", "spec.paused is true"
        elif strategy.get("type") == "OnDelete":
            reason, message = "OnDelete", "DPUs are updated one by one by their operators"
        elif strategy.get("windows") and not in_window(strategy["windows"], self.clock()):
            reason, message = "OutsideWindow", "updates start only inside the maintenance windows"
        else:
            budget = max_unavailable - len(busy)
            if canary is not None:
                budget = min(budget, canary - len(updated_names))
            chosen: list[dict[str, Any]] = []
            for d in dpus:
                if budget <= 0:
                    break
                if updated(d) or unavailable(d):
                    continue
                host = _host(d)
                if host and per_host is not None and busy_hosts.get(host, 0) >= per_host:
                    continue
                chosen.append(d)
                budget -= 1
                if host:
                    busy_hosts[host] = busy_hosts.get(host, 0) + 1
            # one trip to a store thread for the whole wave (a hundred trips wait behind every other
            # controller's store calls); a DPU that changed meanwhile is left for the next pass
            seen = self._dpus.seen(key.project)
            busy_now = set(busy_names)

            def recheck() -> set[str]:
                return self._newly_busy(key.project, seen, tally.rows.keys(), busy_now, chosen, template_items, image)

            written = await self.store.call(self._update_all, chosen, template, recheck) if chosen else []
            for dpu in written:
                self._dpus.put(dpu)  # counted as started by the next pass, whenever the feed brings the change
            started = [dpu["metadata"]["name"] for dpu in written]
            canaries_done = (
                canary is not None and not started and len(updated_names) >= canary and converged_names >= updated_names
            )
            if canaries_done:
                reason = "CanaryHold"
                message = f"{canary} canary DPU(s) converged; set strategy.type RollingUpdate to promote"

        done = len(converged_names)
        generation = dpuset["metadata"].get("generation")

        def mutate(status: dict[str, Any]) -> None:
            if template and status.get("currentTemplate") != template:
                # remembered for `dpufleet rollout undo`
                if status.get("currentTemplate"):
                    status["previousTemplate"] = status["currentTemplate"]
                status["currentTemplate"] = template
            status.update(
                dpus=total,
                updated=len(updated_names) + len(started),
                ready=done,
                unavailable=len(busy) + len(started),
                failed=len(failures),
                failedDPUs=failures[:20],
                maxUnavailable=max_unavailable,
                observedGeneration=generation,
            )
            complete = total > 0 and done == total
            status["phase"] = "Complete" if complete else ("Halted" if halted else reason)
            if complete:
                set_condition(
                    status, "RolledOut", True, "Complete", f"{total} DPU(s) run the template", generation=generation
                )
            else:
                severity = Severity.ERROR if halted else Severity.INFO
                set_condition(
                    status,
                    "RolledOut",
                    False,
                    reason,
                    message or f"{done}/{total} converged, {len(busy) + len(started)} unavailable",
                    severity=severity,
                    generation=generation,
                )
            ready_value = complete or not (halted or reason == "Aborted")
            set_condition(
                status,
                "Ready",
                ready_value,
                "Complete" if complete else reason,
                message,
                severity=None if ready_value else Severity.ERROR,
                generation=generation,
            )

        before = (dpuset.get("status") or {}).get("phase")
        trial = json_copy(dpuset.get("status") or {})
        mutate(trial)
        if trial != (dpuset.get("status") or {}):  # most recounts change nothing: no write then
            await mutate_status(self.store, "DPUSet", key.name, mutate, key.project)
        if started:
            self.events.post(dpuset, "Updating", f"updating {', '.join(started)} ({done}/{total} done)")
        if halted and before != "Halted":
            self.events.post(dpuset, "Halted", message, "Warning")
        return Result(requeue_after=None if (total and done == total) else self.poll_seconds)

    def _sets(self, project: str) -> list[dict[str, Any]]:
        """The project's DPUSets, listed again only when one was made, changed or deleted (every pass
        asks; listing them each time was a twentieth of a rollout's work)."""
        fingerprint = self.store.fingerprint("DPUSet", project)
        if fingerprint[0] <= 1:
            return []  # one set (the one asking) or none: no older set to ask about, and nothing listed
        cached = self._listed_sets.get(project)
        if cached is None or cached[0] != fingerprint:
            cached = self._listed_sets[project] = (fingerprint, self.store.list("DPUSet", project).items)
        return cached[1]

    def _claimed_by_older_sets(self, dpuset: dict[str, Any]) -> dict[str, str]:
        """DPUs an older DPUSet of the same project also selects: the oldest set owns a DPU."""
        meta = dpuset["metadata"]
        mine = (meta.get("creationTimestamp") or "", meta["name"])
        claimed: dict[str, str] = {}
        for other in self._sets(meta["project"]):
            ometa = other["metadata"]
            if (ometa.get("creationTimestamp") or "", ometa["name"]) >= mine or ometa.get("deletionTimestamp"):
                continue
            selector = LabelSelector.model_validate(other["spec"].get("selector") or {})
            for dpu in self.store.list_fields("DPU", [("spec",)], meta["project"], selector):
                claimed.setdefault(dpu["metadata"]["name"], ometa["name"])
        return claimed

    async def _abort(
        self,
        dpuset: dict[str, Any],
        dpus: list[dict[str, Any]],
        updated: Callable[[dict[str, Any]], bool],
        converged: Callable[[dict[str, Any]], bool],
    ) -> str:
        """Put every updated DPU that has not begun writing back on its running image; say what is left."""
        reverted: list[str] = []
        finishing: list[str] = []
        for d in dpus:
            if not updated(d) or converged(d):
                continue
            status, name = d.get("status") or {}, d["metadata"]["name"]
            phase = status.get("phase")
            if phase in FAILED_PHASES or not status.get("installedImage"):
                continue  # failed ones wait for an operator; one that never ran an image has nothing to go back to
            if phase not in BEFORE_WRITING or (status.get("provisioning") or {}).get("componentsDone"):
                finishing.append(name)  # writing, booting or configuring what was written: never interrupted
                continue
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": d["metadata"]["resourceVersion"]},
                "spec": {"image": status["installedImage"], "flavor": status.get("appliedFlavor")},
            }
            if phase in WORKING_PHASES or phase == Phase.AVAILABLE:
                patch["metadata"]["annotations"] = {ABORT: now().isoformat()}  # provisioning stops before writing
            try:
                await self.store.call(self.store.patch, "DPU", name, patch, d["metadata"]["project"])
            except (Conflict, NotFound):
                continue  # changed meanwhile: the next pass looks again
            reverted.append(name)
        if reverted:
            await self.store.call(
                self.events.record,
                dpuset,
                "Aborting",
                f"put back on their running image: {', '.join(reverted[:20])}",
                "Warning",
            )
        message = "aborted: no more DPUs start"
        if finishing:
            message += f"; {len(finishing)} DPU(s) finish writing (never interrupted): {', '.join(finishing[:10])}"
        return message

    def _update_all(
        self, dpus: list[dict[str, Any]], template: dict[str, Any], recheck: Callable[[], set[str]]
    ) -> list[dict[str, Any]]:
        """Write the template into each DPU's spec (its resourceVersion as precondition), all in one
        transaction; the DPUs written (one that changed meanwhile is left for the next pass, and so are
        those `recheck` leaves out)."""
        patches = [
            (d["metadata"]["name"], d["metadata"]["project"],
             {"metadata": {"resourceVersion": d["metadata"]["resourceVersion"]}, "spec": template})
            for d in dpus
        ]  # fmt: skip
        results = self.store.patch_many("DPU", patches, recheck=recheck)
        return [r for r in results if not isinstance(r, APIError)]

    def _newly_busy(
        self,
        project: str,
        seen: int,
        members: Collection[str],
        busy: set[str],
        chosen: list[dict[str, Any]],
        template_items: list[tuple[str, Any]],
        image: str | None,
    ) -> set[str]:
        """Inside the wave's write transaction: the chosen DPUs to leave out because other DPUs of the
        set became unavailable after the count was made (one hangs while the wave is being chosen). As
        many as became unavailable, and every one on a host that did, are left for the next pass, which
        the change feed brings; when the changes since cannot be read, the whole wave waits."""
        names = [d["metadata"]["name"] for d in chosen]
        if self.store.newest_rv("DPU", project) <= seen:
            return set()  # nothing committed since the count: the usual case
        try:
            since = self.store.changes_since(seen, {"DPU"}, limit=NEWLY_BUSY_SCAN)
        except Gone:
            return set(names)
        if len(since) >= NEWLY_BUSY_SCAN:
            return set(names)
        newly: dict[str, dict[str, Any]] = {}
        for change in since:
            if change.type == "DELETED" or change.project != project or change.name not in members:
                continue
            if change.name in busy or change.name in names:
                continue
            doc = change.object()
            if _classify(doc, template_items, image)[2]:
                newly[change.name] = doc
        if not newly:
            return set()
        hosts = {h for h in (_host(d) for d in newly.values()) if h}
        left_out = {d["metadata"]["name"] for d in chosen if _host(d) in hosts}
        keep = [n for n in names if n not in left_out]
        left_out.update(keep[max(0, len(names) - len(newly)) :])
        return left_out
