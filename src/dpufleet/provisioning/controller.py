"""The DPU provisioning controller: walks each DPU from Available to Ready through its phases.

The work of each phase is in provisioning/phases/; this module does what all phases share:
the operator's actions (hold, release, retry, abort), the reservation that keeps two
controllers off one DPU, the timeout of every wait, retries with exponential backoff up to
a limit and then the failed phase, conditions with the Ready summary, an Event at every
transition and the time-in-phase metric. All progress is in `status.provisioning`, so a
restarted controller resumes where the last one stopped.

A DPU without `spec.image` is left exactly as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import (
    FAILED_PHASE,
    FAILED_PHASES,
    IDLE_PHASES,
    NO_ABORT,
    PROVISIONING_STEPS,
    STEP_CONDITION,
    WORKING_PHASES,
    Phase,
    ProvisioningStatus,
)
from ..api.meta import ConditionStatus, Severity, seconds_since
from ..drivers.base import InstallInterface
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.events import Inbox
from ..drivers.registry import NO_BMC_PATHS, build_install_driver
from ..images.repository import ImageRepository
from ..inventory.bmcs import BMCAccessError, BMCSessions
from ..runtime.conditions import set_condition, summarize_ready
from ..runtime.controller import DONE, Key, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store import reservations
from ..store.store import Store
from .flavor import profile_of
from .machine import Next, ProvisioningConfig, StepContext, StepFailed, Wait, stamp
from .metrics import PHASE_SECONDS, TRANSITIONS
from .phases import HANDLERS
from .phases.preparing_host import release_host

log = logging.getLogger(__name__)

RETRY = "dpufleet.io/retry"
ABORT = "dpufleet.io/abort"
PURPOSE = "provisioning"
CLIENT_TTL = 60.0  # seconds a BMC's address and credentials are used before they are read again
# Pushed Redfish events (registry message keys) that end something provisioning waits for: an update
# task's end, a boot's end. Intermediate ones (PoweringOn, and PoweredOff in the middle of a reset)
# would only cost passes: a reboot is recognised by the newer boot it ends in (phases/rebooting.py).
WAKING_EVENTS = frozenset({"UpdateSuccessful", "ApplyFailed", "ResourcePoweredOn"})
TIMEOUT_REASON = {
    Phase.AVAILABLE: "ValidationTimeout",
    Phase.PREPARING_HOST: "HostPreparationTimeout",
    Phase.STAGING_IMAGE: "StagingTimeout",
    Phase.INSTALLING: "InstallTimeout",
    Phase.REBOOTING: "RebootTimeout",
    Phase.CONFIGURING: "ConfigureTimeout",
}


def default_owner() -> str:
    """Who holds reservations: stable across restarts of this controller, so it can clear its own."""
    return os.environ.get("DPUFLEET_CONTROLLER_ID") or f"{socket.gethostname()}/provisioner"


@dataclass
class _Pass:
    """One reconcile pass over one DPU: the BMC connection it opened, if any."""

    client: RedfishClient | None = None
    system: str | None = None
    drivers: dict[str, InstallInterface] = field(default_factory=dict)


class DPUProvisioner(Reconciler):
    kind = "DPU"
    workers = 64
    wake_on_status = True  # inventory arriving (a status write by discovery) can unblock provisioning

    def wakes_on_status(self, obj: dict[str, Any]) -> bool:
        """A DPU waiting to start wakes on any status change: inventory arriving can unblock it. One being
        provisioned is driven by its own requeues: its status writes (most of them this controller's)
        would otherwise each cause an extra pass at once. One that provisioning is done with (Ready,
        failed, held) wakes only when another writer left its Ready summary without the provisioning
        steps, or a Ready one no longer runs its spec.image as far as provisioning knows: the health
        controller's periodic writes to every Ready DPU are no work for provisioning."""
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase in WORKING_PHASES or phase == Phase.AVAILABLE:
            return False
        meta = obj["metadata"]
        if (meta["project"], meta["name"]) in self._held:
            return False  # started here: a write another controller made before it saw the start is no news
        if phase == Phase.READY or phase in FAILED_PHASES or phase == Phase.HELD:
            progress = status.get("provisioning")
            if progress is None:
                return False  # never provisioned here (zero-touch onboarding): not ours to summarise
            spec = obj.get("spec") or {}
            if phase == Phase.READY and spec.get("image") and status.get("installedImage") != spec.get("image"):
                return True  # what it runs is no longer known (provisioning/reinstall.py): install again
            return _ready_is_stale(status, _ready_steps(progress.get("abortedGeneration")))
        return True

    def __init__(
        self,
        store: Store,
        config: ProvisioningConfig | None = None,
        *,
        owner: str | None = None,
        repository: ImageRepository | None = None,
        sessions: BMCSessions | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        self.store = store
        self.config = config or ProvisioningConfig.from_env()
        self.owner = owner or default_owner()
        self.repository = repository  # None: no image repository beside the store (staging refuses)
        self.inbox = inbox or Inbox()  # pushed Redfish events (the composition root shares the server's)
        self.events = EventRecorder(store, "provisioner")
        self._started = False
        self._start_lock = asyncio.Lock()
        # Reservations this controller holds, with their expiry: renewed in the store only when half
        # their time is gone (one write per DPU per phase otherwise). The store stays authoritative:
        # no other controller can take a reservation before it expires.
        self._held: dict[tuple[str, str], float] = {}
        # BMC sessions (inventory/bmcs.py): the BMC's pooled client, kept between passes (a thousand DPUs
        # polled every few seconds would otherwise read the BMC, its Credential and secret and open a
        # connection each time); changed credentials or addresses are picked up within CLIENT_TTL.
        self.sessions = sessions or BMCSessions(store)
        self._bmc_dpus: dict[tuple[str, str], set[str]] = {}  # (project, BMC) -> the DPUs reached through it
        self._waiting: dict[Key, None] = {}  # DPUs that asked to start while max_in_flight were in flight, in order
        self._wake: Callable[[Key], None] | None = None

    def started(self, wake: Callable[[Key], None]) -> None:
        """A pushed BMC event (a task finished, a boot progressed) wakes the DPUs of that BMC this
        controller is working on at once, instead of at their next poll."""
        self._wake = wake

        def on_event(project: str, bmc: str, message_id: str, _severity: str) -> None:
            if message_id.rsplit(".", 1)[-1] not in WAKING_EVENTS:
                return
            for name in self._bmc_dpus.get((project, bmc), ()):
                if (project, name) in self._held:  # being provisioned here (its reservation is held)
                    wake(Key(project, name))

        self.inbox.listen(on_event)

    async def _startup(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                cleared = await self.store.call(reservations.release_all, self.store, self.owner)
                if cleared:
                    log.info(
                        "cleared %d reservation(s) this controller (%s) held before it restarted", cleared, self.owner
                    )
                self._started = True

    # --- the pass ---------------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> Result:
        await self._startup()
        try:
            dpu = await self.store.call(self.store.get, "DPU", key.name, key.project)
        except NotFound:
            self._free_slot(key.project, key.name)
            for (project, _bmc), dpus in self._bmc_dpus.items():
                if project == key.project:
                    dpus.discard(key.name)
            await self.store.call(reservations.release, self.store, "DPU", key.project, key.name, self.owner)
            return DONE
        if dpu["metadata"].get("deletionTimestamp"):
            self._free_slot(key.project, key.name)
            await self.store.call(reservations.release, self.store, "DPU", key.project, key.name, self.owner)
            return DONE
        session = _Pass()
        return await self._reconcile(dpu, session)  # its BMC client stays in the cache (_connect)

    async def _reconcile(self, dpu: dict[str, Any], session: _Pass) -> Result:
        spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
        raw = status.get("provisioning")
        progress = ProvisioningStatus.model_validate(raw or {})
        phase = _phase(status.get("phase"))
        ctx = self._context(dpu, progress, session)

        # Held: hands off. Released: back where it was, with a fresh clock for the wait it resumes.
        if spec.get("held"):
            if phase != Phase.HELD:
                progress.heldFrom = str(phase) if phase else None
                await self._release_reservation(ctx)
                await self._move(ctx, phase, Phase.HELD, "held by an operator: no action until released")
            return DONE
        if phase == Phase.HELD:
            back = _phase(progress.heldFrom) or Phase.DISCOVERED
            progress.heldFrom = None
            await self._move(ctx, Phase.HELD, back, f"released: resuming {back}")
            return Result(requeue_after=0.0)

        if not spec.get("image") and raw is None:
            return DONE  # nothing asked of this DPU: leave it exactly as it is
        if raw is not None:  # never provisioned here (e.g. onboarded by zero-touch bootstrap): not ours to summarise
            await self._keep_ready_summary(ctx)

        action = await self._operator_action(ctx, phase)
        if action is not None:
            return action

        generation = int(dpu["metadata"].get("generation") or 1)
        if phase in FAILED_PHASES:
            if spec.get("image") and progress.generation != generation:
                return await self._start(ctx, phase, "the spec changed: provisioning starts over")
            return DONE  # waits for `dpufleet dpu retry` (or a new spec)
        if phase in IDLE_PHASES or phase is None:
            if not spec.get("image") or not self._wants_provisioning(dpu, progress):
                return DONE
            if not status.get("bmc") and not _reachable_without_bmc(dpu):
                return DONE  # not inventoried through a BMC yet; its status change wakes us
            return await self._start(ctx, phase, f"image {spec['image']} requested")
        if phase == Phase.AVAILABLE or phase in WORKING_PHASES:
            return await self._step(ctx, phase)
        return DONE

    @staticmethod
    def _wants_provisioning(dpu: dict[str, Any], progress: ProvisioningStatus) -> bool:
        spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
        generation = int(dpu["metadata"].get("generation") or 1)
        if progress.abortedGeneration == generation:
            return False
        return status.get("installedImage") != spec.get("image") or status.get("appliedFlavor") != spec.get("flavor")

    # --- operator actions -------------------------------------------------------------------------------

    async def _operator_action(self, ctx: StepContext, phase: Phase | None) -> Result | None:
        annotations = ctx.dpu["metadata"].get("annotations") or {}
        progress = ctx.progress
        abort = annotations.get(ABORT)
        if abort and abort != progress.handledAbort:
            progress.handledAbort = abort
            if phase in NO_ABORT:
                await ctx.save()
                await ctx.record(
                    "AbortRefused",
                    f"cannot abort while {phase}: the device is writing or booting; "
                    "wait for the step to end or fail, or hold the DPU",
                    True,
                )
                return DONE
            if phase in WORKING_PHASES or phase in FAILED_PHASES or phase == Phase.AVAILABLE:
                await release_host(ctx)
                await self._release_reservation(ctx)
                progress.abortedGeneration = int(ctx.dpu["metadata"].get("generation") or 1)
                await self._move(ctx, phase, Phase.AVAILABLE, "aborted by an operator", clear_steps=True)
                return DONE
            await ctx.save()
            return DONE
        retry = annotations.get(RETRY)
        if retry and retry != progress.handledRetry:
            progress.handledRetry = retry
            if phase in FAILED_PHASES and progress.failedPhase:
                step = Phase(progress.failedPhase)
                handler = HANDLERS[step]
                handler.reset(progress)
                progress.attempt = 0
                progress.retryAt = None
                if step == Phase.AVAILABLE:
                    progress.generation = int(ctx.dpu["metadata"].get("generation") or 1)
                await self._move(ctx, phase, step, f"retry requested: {step} starts again", retrying=step)
                return Result(requeue_after=0.0)
            if progress.abortedGeneration is not None:
                progress.abortedGeneration = None
                await ctx.save()
                return Result(requeue_after=0.0)
            await ctx.save()
            await ctx.record("RetryIgnored", f"nothing to retry in phase {phase}", False)
        return None

    # --- steps ------------------------------------------------------------------------------------------

    async def _start(self, ctx: StepContext, phase: Phase | None, why: str) -> Result:
        key = Key(ctx.project, ctx.name)
        if (ctx.project, ctx.name) not in self._held and len(self._held) >= self.config.max_in_flight:
            if key not in self._waiting:
                self._waiting[key] = None  # its turn comes when one in flight finishes (_release_reservation)
            return DONE
        self._waiting.pop(key, None)
        self._held.setdefault((ctx.project, ctx.name), 0.0)  # its slot, taken now (the reservation follows)
        spec = ctx.spec
        old = ctx.progress
        ctx.progress = ProvisioningStatus(
            image=spec.get("image"),
            flavor=spec.get("flavor"),
            generation=int(ctx.dpu["metadata"].get("generation") or 1),
            startedAt=stamp(),
            handledRetry=old.handledRetry,
            handledAbort=old.handledAbort,
        )
        await self._move(ctx, phase, Phase.AVAILABLE, why, clear_steps=True, hold=True)
        return await self._step(ctx, Phase.AVAILABLE)

    async def _step(self, ctx: StepContext, phase: Phase) -> Result:
        """Run the phase's handler, and the next phase's at once while one leads straight into another
        (their transitions are written together); whatever ends the pass writes what is held."""
        result = Result(requeue_after=0.0)
        for _ in range(len(HANDLERS) + 1):
            outcome = await self._step_once(ctx, phase)
            if isinstance(outcome, Result):
                result = outcome
                break
            phase = outcome
        if ctx.held:
            await self._write(ctx)
        return result

    async def _step_once(self, ctx: StepContext, phase: Phase) -> Result | Phase:
        """One phase's handler: the Result that ends this pass, or the working phase it moved on to."""
        progress = ctx.progress
        if phase in WORKING_PHASES and not await self._reserve(ctx):
            return Result(requeue_after=min(self.config.reservation_ttl, 30.0))
        if progress.retryAt:
            remaining = -seconds_since(progress.retryAt)
            if remaining > 0:
                return Result(requeue_after=remaining)
            progress.retryAt = None
        handler = HANDLERS[phase]
        try:
            if ctx.seconds_in_phase() > self.config.timeouts.of(phase):
                raise StepFailed(
                    TIMEOUT_REASON[phase], f"{phase} did not finish within {self.config.timeouts.of(phase):g}s"
                )
            outcome = await handler.handle(ctx)
        except StepFailed as failure:
            return await self._failed(ctx, phase, failure)
        except RedfishError as exc:
            return await self._failed(ctx, phase, StepFailed("BMCError", str(exc)))
        if isinstance(outcome, Wait):
            progress.message = outcome.message or progress.message
            if ctx.held or _worth_saving(progress, ctx.status.get("provisioning"), outcome.seconds):
                await ctx.save()
            return Result(requeue_after=outcome.seconds)
        assert isinstance(outcome, Next)
        onward = outcome.phase in WORKING_PHASES
        # straight on with the next step in this pass: the transition is written with the next write
        await self._move(ctx, phase, outcome.phase, outcome.message, hold=onward)
        if onward:
            return outcome.phase
        # Ready is the end (a new spec wakes it); any other phase is looked at again at once
        return DONE if outcome.phase == Phase.READY else Result(requeue_after=0.0)

    async def _failed(self, ctx: StepContext, phase: Phase, failure: StepFailed) -> Result:
        progress = ctx.progress
        progress.attempt += 1
        progress.reason, progress.message = failure.reason, failure.message
        condition = STEP_CONDITION[phase]
        limit = self.config.max_attempts
        if failure.retryable and progress.attempt < limit:
            delay = self.config.retry_delay(progress.attempt)
            HANDLERS[phase].reset(progress)
            retry_at = _later(delay)
            progress.retryAt = retry_at
            progress.phaseStartedAt = retry_at  # the retried step gets its whole time again
            text = f"attempt {progress.attempt} of {limit} failed: {failure.message}; retrying in {delay:g}s"

            def mutate(status: dict[str, Any]) -> None:
                set_condition(status, condition, False, failure.reason, text, severity=Severity.WARNING)
                status["provisioning"] = progress.model_dump(mode="json")
                summarize_ready(status, PROVISIONING_STEPS)

            await self._write(ctx, mutate)
            await ctx.record(failure.reason, text, True)
            return Result(requeue_after=delay)
        target = FAILED_PHASE[phase]
        progress.failedPhase = str(phase)
        progress.retryAt = None
        text = (
            failure.message if failure.retryable is False else f"{failure.message} (after {progress.attempt} attempts)"
        )
        await self._release_reservation(ctx)
        await self._move(ctx, phase, target, text, failed=(condition, failure.reason))
        return DONE

    # --- writing the outcome ----------------------------------------------------------------------------

    async def _move(
        self,
        ctx: StepContext,
        source: Phase | None,
        target: Phase,
        message: str,
        *,
        failed: tuple[str, str] | None = None,
        clear_steps: bool = False,
        retrying: Phase | None = None,
        hold: bool = False,
    ) -> None:
        """Persist a transition: phase, progress, conditions and Ready; then an Event and the metric.
        With `hold`, it is written with the pass's next write instead (the pass goes on at once)."""
        progress = ctx.progress
        spent = seconds_since(progress.phaseStartedAt) if progress.phaseStartedAt else None
        progress.phase = str(target)
        progress.phaseStartedAt = stamp()
        if target not in FAILED_PHASES and target != Phase.HELD:
            progress.attempt = 0
            progress.reason = None
        progress.message = message
        ready = target == Phase.READY
        if ready:
            await release_host(ctx)
            await self._release_reservation(ctx)
        updates = dict(ctx.status_updates)
        ctx.status_updates.clear()

        def mutate(status: dict[str, Any]) -> None:
            status.update(updates)
            status["phase"] = str(target)
            if clear_steps:
                status["conditions"] = [
                    c for c in status.get("conditions") or [] if c.get("type") not in STEP_CONDITION.values()
                ]
                if progress.abortedGeneration is None:
                    for step in STEP_CONDITION.values():
                        set_condition(status, step, ConditionStatus.UNKNOWN, "Pending", severity=Severity.INFO)
            if source in STEP_CONDITION and failed is None and target not in (Phase.HELD, Phase.AVAILABLE):
                set_condition(status, STEP_CONDITION[source], True, "Succeeded", message)
            if failed is not None:
                set_condition(status, failed[0], False, failed[1], message, severity=Severity.ERROR)
            if retrying is not None:
                set_condition(
                    status,
                    STEP_CONDITION[retrying],
                    ConditionStatus.UNKNOWN,
                    "Retrying",
                    message,
                    severity=Severity.INFO,
                )
            if ready:
                status["installedImage"] = progress.image
                status["installedSequence"] = progress.manifestSequence  # rollback protection (images/verify.py)
                status["appliedFlavor"] = progress.flavor
            status["provisioning"] = progress.model_dump(mode="json")
            summarize_ready(status, _ready_steps(progress.abortedGeneration))

        if source is not None and spent is not None:
            PHASE_SECONDS.labels(str(source), "failed" if failed else "left").observe(max(spent, 0.0))
        TRANSITIONS.labels(str(source or "None"), str(target)).inc()
        event = (failed[1] if failed else str(target), f"{source or 'None'} -> {target}: {message}", failed is not None)
        ctx.held.append(mutate)
        ctx.held_events.append(event)
        if not hold:
            await self._write(ctx)

    async def _write(self, ctx: StepContext, mutate: Callable[[dict[str, Any]], None] | None = None) -> None:
        """One status write: the transitions held in this pass, in order, then `mutate`; then their Events."""
        mutators = [*ctx.held, *([mutate] if mutate is not None else [])]
        events = list(ctx.held_events)
        ctx.held.clear()
        ctx.held_events.clear()

        def apply(status: dict[str, Any]) -> None:
            for each in mutators:
                each(status)

        ctx.dpu = await mutate_status(self.store, "DPU", ctx.name, apply, ctx.project, ctx.dpu)
        for reason, text, warning in events:
            await ctx.record(reason, text, warning)

    async def _keep_ready_summary(self, ctx: StepContext) -> None:
        """Ready covers the provisioning steps too: if another writer (the BMC controller's refresh)
        summarised it from its own steps only, put the provisioning steps back in."""
        steps = _ready_steps(ctx.progress.abortedGeneration)
        if not _ready_is_stale(ctx.status, steps):
            return

        def mutate(current: dict[str, Any]) -> None:
            summarize_ready(current, steps)

        await self._write(ctx, mutate)

    async def _reserve(self, ctx: StepContext) -> bool:
        """Take or renew this DPU's reservation; False while another controller holds it."""
        key = (ctx.project, ctx.name)
        ttl = self.config.reservation_ttl
        if self._held.get(key, 0.0) - time.time() > ttl / 2:
            return True
        other = await self.store.call(
            reservations.reserve, self.store, "DPU", ctx.project, ctx.name, self.owner, PURPOSE, ttl
        )
        if other is not None:
            self._free_slot(*key)
            log.info("%s is reserved by %s until %.0f", ctx.name, other.owner, other.expires_at)
            return False
        self._held[key] = time.time() + ttl
        return True

    async def _release_reservation(self, ctx: StepContext) -> None:
        self._free_slot(ctx.project, ctx.name)
        await self.store.call(reservations.release, self.store, "DPU", ctx.project, ctx.name, self.owner)

    def _free_slot(self, project: str, name: str) -> None:
        if self._held.pop((project, name), None) is not None:
            self._admit_next()

    def _admit_next(self) -> None:
        """A slot freed: wake the DPUs that waited longest for one (as many as there are free slots)."""
        free = self.config.max_in_flight - len(self._held)
        while free > 0 and self._waiting and self._wake is not None:
            key = next(iter(self._waiting))
            del self._waiting[key]
            self._wake(key)
            free -= 1

    # --- the context handlers work with -------------------------------------------------------------------

    def _context(self, dpu: dict[str, Any], progress: ProvisioningStatus, session: _Pass) -> StepContext:
        async def save() -> None:
            snapshot = ctx.progress.model_dump(mode="json")

            def mutate(status: dict[str, Any]) -> None:
                status["provisioning"] = snapshot

            await self._write(ctx, mutate)

        async def record(reason: str, message: str, warning: bool) -> None:
            self.events.post(ctx.dpu, reason, message, "Warning" if warning else "Normal")

        async def redfish() -> tuple[RedfishClient, str]:
            if session.client is None or session.system is None:
                session.client, session.system = await self._connect(ctx.dpu)
            return session.client, session.system

        async def install_driver(path: str) -> InstallInterface:
            if path not in session.drivers:
                client, system = await redfish() if path not in NO_BMC_PATHS else (None, None)
                profile = profile_of(ctx.status)
                os_fw = profile.firmware_of_kind("os") if profile else None
                driver = build_install_driver(
                    path, client, system, store=self.store, project=ctx.project, dpu=ctx.name,
                    os_target=os_fw.id if os_fw else None,
                )  # fmt: skip
                if driver is None:
                    raise StepFailed("InstallPathUnsupported", f"no install driver {path!r}", retryable=False)
                session.drivers[path] = driver
            return session.drivers[path]

        ctx = StepContext(
            store=self.store,
            dpu=dpu,
            progress=progress,
            config=self.config,
            repository=self.repository,
            redfish=redfish,
            install_driver=install_driver,
            save=save,
            record=record,
        )
        return ctx

    async def _connect(self, dpu: dict[str, Any]) -> tuple[RedfishClient, str]:
        """The DPU's BMC client and its system on the BMC (status.bmcSystem from the crawl, else looked up)."""
        project = dpu["metadata"]["project"]
        bmc_name = (dpu.get("status") or {}).get("bmc")
        if not bmc_name:
            raise StepFailed("NoBMC", "the DPU is not managed through a BMC")
        self._bmc_dpus.setdefault((project, bmc_name), set()).add(dpu["metadata"]["name"])
        try:
            session = await self.sessions.for_dpu(dpu, max_age=CLIENT_TTL, retries=2)
        except BMCAccessError as exc:
            raise StepFailed(exc.reason, exc.message) from None
        return session.client, await session.system()


def _reachable_without_bmc(dpu: dict[str, Any]) -> bool:
    """A DPU with no BMC can still be provisioned through a path that needs none (host-channel),
    once its host agent paired it and its model is known."""
    spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
    profile = profile_of(status)
    path = spec.get("installPath") or (profile.install_paths[0] if profile and profile.install_paths else None)
    return path in NO_BMC_PATHS and bool(status.get("host"))


def _worth_saving(progress: ProvisioningStatus, saved: Any, pause: float) -> bool:
    """Whether a Wait writes its progress: always when a field other than the message changed; a new
    message alone only when the pause is long enough for a user to read it (a write per fast poll of
    the same task would be most of the control plane's work with a thousand DPUs)."""
    current = progress.model_dump(mode="json")
    if current == saved:
        return False
    if not isinstance(saved, dict) or pause >= 1.0:
        return True
    return {k: v for k, v in current.items() if k != "message"} != {k: v for k, v in saved.items() if k != "message"}


def _ready_steps(aborted_generation: Any) -> list[str]:
    """The conditions Ready summarises: the provisioning steps, or only inventory once aborted."""
    return ["Inventoried"] if aborted_generation is not None else PROVISIONING_STEPS


def _ready_is_stale(status: dict[str, Any], steps: list[str]) -> bool:
    """Whether Ready, summarised from `steps`, would differ from the stored one (read on a copy of the
    conditions, all Ready is made of)."""
    return summarize_ready(
        {"conditions": list(status.get("conditions") or [])}, steps
    )  # replaces, never edits, a condition


def _phase(value: Any) -> Phase | None:
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def _later(seconds: float) -> str:
    from datetime import timedelta

    from ..api.meta import isotime, now

    return isotime(now() + timedelta(seconds=seconds))
