"""PowerAction controller: controlled resets of a DPU, a host, or both, in the host's boot order.

A PowerAction is planned once (Pending -> Running): its target is resolved, the right to touch
it checked (the action's project must own or lease the target and, for host modes, the host),
the declared host impact written, and the steps listed. Then the steps run in order, each
persisted before it acts (a restarted controller resumes at the step it was in):

- reset-dpu: the DPU's BMC (Redfish ComputerSystem.Reset), its boot progress saved first;
- wait-dpu: until the DPU runs again (BootProgress OSRunning with a newer boot), or is Off;
- reset-host / wait-host: the host power driver (Host.spec.powerURL), until its OS runs again
  with a higher boot count.

`both` follows Host.spec.bootOrder: dpu-first (default) resets the DPU, waits until it runs,
then resets the host; host-first the reverse; independent resets both, then waits for both.
Each step has a timeout (spec.stepTimeoutSeconds, else the host's bootTimeoutSeconds); the
first failing step ends the action Failed with the step's reason. Nothing is retried: a
reset is an operator's request, and repeating it unasked would disturb the host again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import (
    HOST_IMPACT,
    BootOrder,
    PowerActionStatus,
    PowerMode,
    PowerStep,
    ResetType,
)
from ..api.meta import isotime, now
from ..drivers.hostpower import HostPowerError, HostPowerInterface, HttpHostPower
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.hostbmc import RedfishHostPower, find_host_system
from ..drivers.redfish.install import read_boot
from ..drivers.redfish.power import RedfishPower
from ..inventory.bmcs import BMCAccessError, BMCSessions
from ..runtime.controller import DONE, Key, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..store.store import Store

POLL_SECONDS = 1.0
DEFAULT_STEP_TIMEOUT = 600.0
_OFF_TYPES = {ResetType.FORCE_OFF}
# A factory for the host power driver: (url, bearer token) -> driver; tests may swap it.
HostPowerFactory = Callable[[str, str | None], HostPowerInterface]


class ActionFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PowerActionReconciler(Reconciler):
    kind = "PowerAction"
    workers = 8

    def __init__(
        self,
        store: Store,
        poll_seconds: float = POLL_SECONDS,
        host_power: HostPowerFactory | None = None,
        sessions: BMCSessions | None = None,
    ) -> None:
        self.store = store
        self.sessions = sessions or BMCSessions(store)
        self.poll_seconds = poll_seconds
        self.host_power: HostPowerFactory = host_power or (lambda url, token: HttpHostPower(url, token))
        self.events = EventRecorder(store, "power-controller")

    # --- the loop ---------------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> Result:
        try:
            action = await self.store.call(self.store.get, "PowerAction", key.name, key.project)
        except NotFound:
            return DONE
        if action["metadata"].get("deletionTimestamp"):
            return DONE
        status = PowerActionStatus.model_validate(action.get("status") or {})
        if status.phase in ("Succeeded", "Failed"):
            return DONE
        if not status.steps:
            try:
                status = await self._plan(action)
            except ActionFailed as exc:
                await self._finish(action, status, "Failed", exc.reason, exc.message)
                return DONE
            await self._save(action, status)
            await self._event(action, "Started", f"{len(status.steps)} step(s); {status.hostImpact}")
        timeout = self._timeout(action)
        for step in status.steps:
            if step.result == "Succeeded":
                continue
            try:
                done = await self._run(action, status, step, timeout)
            except ActionFailed as exc:
                step.result, step.finished, step.message = "Failed", isotime(now()), exc.message
                await self._finish(action, status, "Failed", exc.reason, f"{step.what}: {exc.message}")
                return DONE
            if not done:
                await self._save(action, status)
                return Result(requeue_after=self.poll_seconds)
            step.result, step.finished = "Succeeded", isotime(now())
            await self._save(action, status)
            await self._event(action, "StepSucceeded", f"{step.what}: {step.message or 'done'}")
        await self._finish(action, status, "Succeeded", "Completed", f"{len(status.steps)} step(s) done")
        return DONE

    def _timeout(self, action: dict[str, Any]) -> float:
        value = (action.get("status") or {}).get("stepTimeoutSeconds")
        return float(value) if value else DEFAULT_STEP_TIMEOUT

    async def _save(self, action: dict[str, Any], status: PowerActionStatus) -> None:
        data = status.model_dump(mode="json", exclude_none=True)
        generation = action["metadata"].get("generation")

        def mutate(current: dict[str, Any]) -> None:
            current.update(data)
            current["observedGeneration"] = generation

        meta = action["metadata"]
        await mutate_status(self.store, "PowerAction", meta["name"], mutate, meta["project"])

    async def _finish(
        self, action: dict[str, Any], status: PowerActionStatus, phase: str, reason: str, message: str
    ) -> None:
        status.phase, status.reason, status.message, status.finishedAt = phase, reason, message, isotime(now())
        await self._save(action, status)
        await self._event(action, reason if phase == "Failed" else "Succeeded", message, warning=phase == "Failed")

    async def _event(self, obj: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.post(obj, reason, message, "Warning" if warning else "Normal")

    # --- planning ---------------------------------------------------------------------------------------

    def _visible(self, kind: str, name: str, project: str) -> dict[str, Any]:
        """The object the action's project owns or leases under that name (the right to reset it)."""
        try:
            return self.store.get(kind, name, project)
        except NotFound:
            pass
        leased = [
            o
            for o in self.store.list(kind).items
            if o["metadata"]["name"] == name and o["spec"].get("lessee") == project
        ]
        if len(leased) == 1:
            return leased[0]
        raise ActionFailed(
            "TargetNotFound" if not leased else "TargetAmbiguous",
            f"{kind.lower()} {name!r} is not owned by or leased to project {project!r}"
            if not leased
            else f"several {kind}s named {name!r} are leased to project {project!r}",
        )

    def _permitted(self, obj: dict[str, Any], project: str) -> None:
        meta = obj["metadata"]
        if meta["project"] != project and (obj.get("spec") or {}).get("lessee") != project:
            raise ActionFailed(
                "NotPermitted",
                f"{obj['kind'].lower()} {meta['name']!r} is neither owned by nor leased to project {project!r}",
            )

    def _dpus_of(self, host: dict[str, Any]) -> list[dict[str, Any]]:
        name, project = host["metadata"]["name"], host["metadata"]["project"]
        listed = set((host.get("status") or {}).get("dpus") or [])
        found = [
            d
            for d in self.store.list("DPU", project).items
            if d["metadata"]["name"] in listed
            or ((d.get("status") or {}).get("host") or (d.get("spec") or {}).get("hostRef")) == name
        ]
        return sorted(found, key=lambda d: d["metadata"]["name"])

    async def _plan(self, action: dict[str, Any]) -> PowerActionStatus:
        return await self.store.call(self._plan_sync, action)

    def _plan_sync(self, action: dict[str, Any]) -> PowerActionStatus:
        spec, project = action["spec"], action["metadata"]["project"]
        mode = PowerMode(spec.get("mode") or PowerMode.DPU_ONLY)
        reset_type = ResetType(spec.get("resetType") or ResetType.FORCE_RESTART)
        target = spec["target"]
        obj = self._visible(target["kind"], target["name"], project)
        host: dict[str, Any] | None = None
        dpus: list[dict[str, Any]] = []
        if target["kind"] == "DPU":
            dpus = [obj]
            host_name = (obj.get("status") or {}).get("host") or (obj.get("spec") or {}).get("hostRef")
            if mode != PowerMode.DPU_ONLY:
                if not host_name:
                    raise ActionFailed(
                        "NoHost", f"dpu {target['name']!r} is in no known host (status.host, spec.hostRef)"
                    )
                try:
                    host = self.store.get("Host", host_name, obj["metadata"]["project"])
                except NotFound:
                    raise ActionFailed(
                        "NoHost", f"host {host_name!r} of dpu {target['name']!r} does not exist"
                    ) from None
        else:
            host = obj
        if host is not None:
            self._permitted(host, project)
            if mode == PowerMode.ALL_DPUS_OF_HOST or (mode == PowerMode.BOTH and target["kind"] == "Host"):
                dpus = self._dpus_of(host)
                if not dpus:
                    raise ActionFailed("NoDPUs", f"host {host['metadata']['name']!r} has no DPUs")
                for dpu in dpus:
                    self._permitted(dpu, project)
        host_spec = (host or {}).get("spec") or {}
        needs_host = mode in (PowerMode.HOST_ONLY, PowerMode.BOTH)
        if needs_host and not (host_spec.get("bmcRef") or host_spec.get("powerURL")):
            raise ActionFailed(
                "HostPowerNotConfigured",
                f"host power driver not configured: host {(host or {}).get('metadata', {}).get('name')!r} "
                "has no spec.bmcRef (its BMC) nor spec.powerURL",
            )

        def dpu_steps(group: list[dict[str, Any]], parallel: bool) -> list[PowerStep]:
            names = [d["metadata"]["name"] for d in group]
            resets = [PowerStep(what=f"{reset_type} dpu/{n} (BMC)", action="reset-dpu", target=n) for n in names]
            verb = "power off" if reset_type in _OFF_TYPES else "run again (OSRunning)"
            waits = [PowerStep(what=f"wait for dpu/{n} to {verb}", action="wait-dpu", target=n) for n in names]
            if parallel:
                return [*resets, *waits]
            return [s for pair in zip(resets, waits, strict=True) for s in pair]

        host_name = (host or {}).get("metadata", {}).get("name", "")
        host_verb = "power off" if reset_type in _OFF_TYPES else "run again"
        host_reset = PowerStep(
            what=f"{reset_type} host/{host_name} (power driver)", action="reset-host", target=host_name
        )
        host_wait = PowerStep(what=f"wait for host/{host_name} to {host_verb}", action="wait-host", target=host_name)
        parallel = bool(host_spec.get("parallelDPUResets"))
        order = BootOrder(host_spec.get("bootOrder") or BootOrder.DPU_FIRST)
        steps: list[PowerStep]
        if mode in (PowerMode.DPU_ONLY, PowerMode.ALL_DPUS_OF_HOST):
            steps = dpu_steps(dpus, parallel)
        elif mode == PowerMode.HOST_ONLY:
            steps = [host_reset, host_wait]
        elif order == BootOrder.HOST_FIRST:
            steps = [host_reset, host_wait, *dpu_steps(dpus, parallel)]
        elif order == BootOrder.INDEPENDENT:
            group = dpu_steps(dpus, True)
            steps = [s for s in group if s.action == "reset-dpu"] + [host_reset]
            steps += [s for s in group if s.action == "wait-dpu"] + [host_wait]
        else:
            steps = [*dpu_steps(dpus, parallel), host_reset, host_wait]
        impact = HOST_IMPACT[mode]
        if mode == PowerMode.BOTH:
            impact += f" (bootOrder {order})"
        if needs_host and reset_type == ResetType.POWER_CYCLE:
            impact += "; a host power cycle also cuts its DPUs' slot power"
        timeout = spec.get("stepTimeoutSeconds") or host_spec.get("bootTimeoutSeconds") or DEFAULT_STEP_TIMEOUT
        return PowerActionStatus(
            phase="Running",
            hostImpact=impact,
            host=host_name or None,
            steps=steps,
            startedAt=isotime(now()),
            stepTimeoutSeconds=float(timeout),
        )

    # --- the steps --------------------------------------------------------------------------------------

    async def _run(self, action: dict[str, Any], status: PowerActionStatus, step: PowerStep, timeout: float) -> bool:
        """Do (or check) one step; True when it is done. Raises ActionFailed."""
        reset_type = ResetType(action["spec"].get("resetType") or ResetType.FORCE_RESTART)
        if step.when is not None and step.action.startswith("wait"):
            elapsed = (now() - datetime.fromisoformat(step.when.replace("Z", "+00:00"))).total_seconds()
            if elapsed > timeout:
                raise ActionFailed("StepTimeout", f"not done after {timeout:g}s (last seen: {step.message})")
        if step.action in ("reset-dpu", "wait-dpu"):
            return await self._dpu_step(action, status, step, reset_type)
        return await self._host_step(action, status, step, reset_type)

    def _baseline(self, status: PowerActionStatus, step: PowerStep) -> PowerStep | None:
        kind = "reset-dpu" if step.action == "wait-dpu" else "reset-host"
        return next((s for s in status.steps if s.action == kind and s.target == step.target), None)

    async def _dpu_step(
        self, action: dict[str, Any], status: PowerActionStatus, step: PowerStep, reset_type: ResetType
    ) -> bool:
        dpu = await self.store.call(self._find_dpu, action, step.target)
        try:
            client, system = await self._redfish(dpu)
            async with client:
                boot = await read_boot(client, system)
                if step.action == "reset-dpu":
                    if step.result == "Running" and (not boot.running or boot.last_state_time != step.baseline):
                        step.message = "the reset was taken"
                        return True  # resumed after a restart: the DPU already went down
                    step.when, step.result, step.baseline = isotime(now()), "Running", boot.last_state_time
                    await self._save(action, status)  # before the reset: a restart sees it was sent
                    await RedfishPower(client, system).reset(str(reset_type))
                    step.message = f"reset sent (was {boot.power_state}, {boot.last_state})"
                    await self._event(dpu, "PowerReset", f"{reset_type} by poweraction/{action['metadata']['name']}")
                    return True
        except RedfishError as exc:
            raise ActionFailed("BMCError", str(exc)) from None
        if step.when is None:
            step.when, step.result = isotime(now()), "Running"
        step.message = f"{boot.power_state}, {boot.last_state} at {boot.last_state_time}"
        if reset_type in _OFF_TYPES:
            return boot.power_state == "Off"
        if not boot.running:
            step.sawDown = True  # type: ignore[attr-defined]  # extra field, persisted with the step
            return False
        reset = self._baseline(status, step)
        baseline = reset.baseline if reset else None
        if not (bool(getattr(step, "sawDown", False)) or boot.last_state_time != baseline):
            return False
        return await self.store.call(self._ready_for_host, action, status, step, dpu, reset)

    def _ready_for_host(
        self,
        action: dict[str, Any],
        status: PowerActionStatus,
        step: PowerStep,
        dpu: dict[str, Any],
        reset: PowerStep | None,
    ) -> bool:
        """The DPU runs again; with Host.spec.waitForDPUsReady, a DPU with an agent must also have
        reported after its reset before the host is reset (it serves the host's network and storage)."""
        if not status.host or (reset is not None and reset.when is None):
            return True
        try:
            host = self.store.get("Host", status.host, dpu["metadata"]["project"])
        except NotFound:
            return True
        if not (host.get("spec") or {}).get("waitForDPUsReady"):
            return True
        current = self._find_dpu(action, step.target)
        agent = (current.get("status") or {}).get("agent") or {}
        if not agent:
            step.message = f"{step.message}; it has no agent to wait for"
            return True
        heard = str(agent.get("lastHeartbeat") or "")
        since = reset.when if reset is not None and reset.when else step.when or ""
        if heard and since and _stamp(heard) > _stamp(since):
            step.message = f"{step.message}; its agent reports again"
            return True
        step.message = f"{step.message}; waiting for its agent to report (host.spec.waitForDPUsReady)"
        return False

    def _find_dpu(self, action: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return self._visible("DPU", name, action["metadata"]["project"])
        except ActionFailed:
            pass
        host = (action.get("status") or {}).get("host")
        for dpu in self.store.list("DPU").items:  # a DPU of the action's host, found through the host
            if dpu["metadata"]["name"] == name and ((dpu.get("status") or {}).get("host") or "") == host:
                return dpu
        raise ActionFailed("TargetNotFound", f"dpu {name!r} is gone")

    async def _redfish(self, dpu: dict[str, Any]) -> tuple[RedfishClient, str]:
        """The DPU's BMC client (a session's: inventory/bmcs.py) and the DPU's system on it."""
        try:
            session = await self.sessions.for_dpu(dpu, retries=1)
        except BMCAccessError as exc:
            raise ActionFailed(exc.reason, exc.message) from None
        return session.client, await session.system()

    async def _credential(self, ref: str, project: str) -> tuple[str, str]:
        try:
            cred = await self.store.call(self.store.get, "Credential", ref, project)
            password = await self.store.call(self.store.get_secret, "Credential", ref, "password", project)
        except NotFound:
            raise ActionFailed("CredentialsMissing", f"credentials {ref!r} not found in project {project!r}") from None
        return str(cred["spec"]["username"]), password or ""

    async def _host_step(
        self, action: dict[str, Any], status: PowerActionStatus, step: PowerStep, reset_type: ResetType
    ) -> bool:
        host = await self.store.call(self._find_host, action, step.target)
        driver = await self._host_driver(host)
        try:
            state = await driver.state()
            if step.action == "reset-host":
                if step.result == "Running" and (not state.running or str(state.boot_count) != step.baseline):
                    step.message = "the reset was taken"
                    return True
                step.when, step.result, step.baseline = isotime(now()), "Running", str(state.boot_count)
                await self._save(action, status)
                await driver.reset(str(reset_type))
                step.message = f"reset sent (boot count {state.boot_count})"
                await self._event(host, "PowerReset", f"{reset_type} by poweraction/{action['metadata']['name']}")
                return True
        except HostPowerError as exc:
            raise ActionFailed("HostPowerError", str(exc)) from None
        finally:
            await driver.aclose()
        if step.when is None:
            step.when, step.result = isotime(now()), "Running"
        step.message = f"{state.power_state}, OS {'running' if state.running else 'down'}, boot {state.boot_count}"
        if reset_type in _OFF_TYPES:
            return state.power_state == "Off"
        if not state.running:
            step.sawDown = True  # type: ignore[attr-defined]  # extra field, persisted with the step
            return False
        if not state.boot_counted:  # nothing marks a boot: back On is taken as restarted (Ironic does the same)
            step.message = (
                f"{state.power_state} again; the host's BMC reports no boot mark (BootProgress.LastStateTime, "
                "LastResetTime), so the restart is taken as done"
                + (" after it was seen down" if getattr(step, "sawDown", False) else "")
            )
            return True
        reset = self._baseline(status, step)
        baseline = int(reset.baseline) if reset and reset.baseline else 0
        return bool(getattr(step, "sawDown", False)) or state.boot_count > baseline

    async def _host_driver(self, host: dict[str, Any]) -> HostPowerInterface:
        """The host's power driver: its own BMC over Redfish (spec.bmcRef), else spec.powerURL."""
        spec, project, name = host.get("spec") or {}, host["metadata"]["project"], host["metadata"]["name"]
        if spec.get("bmcRef"):
            return await self._host_bmc(spec["bmcRef"], project, name)
        url = spec.get("powerURL")
        if not url:
            raise ActionFailed("HostPowerNotConfigured", f"host power driver not configured: host {name!r}")
        if "/sim/v1/" in url:
            raise ActionFailed(
                "HostPowerMigrate",
                f"host {name!r} spec.powerURL points at the emulator's control API ({url}), which no longer "
                "powers hosts: point spec.bmcRef at a BMC object for the host's BMC (the emulator serves one "
                "per host at /hostbmc/<host-id>) and remove spec.powerURL",
            )
        token = None
        if spec.get("powerCredentialsRef"):
            token = (await self._credential(spec["powerCredentialsRef"], project))[1]
        return self.host_power(url, token)

    async def _host_bmc(self, bmc: str, project: str, host: str) -> HostPowerInterface:
        try:
            session = await self.sessions.open(project, bmc, retries=1)
        except BMCAccessError as exc:
            raise ActionFailed(exc.reason, f"host {host!r} spec.bmcRef: {exc.message}") from None
        if session.credentials is None:
            raise ActionFailed(
                "CredentialsMissing", f"host {host!r} spec.bmcRef: BMC {bmc!r} has no spec.credentialsRef"
            )
        try:
            system = await find_host_system(session.client)
        except HostPowerError as exc:
            raise ActionFailed("HostPowerError", f"host {host!r} spec.bmcRef: {exc}") from None
        return RedfishHostPower(session.client, system, owns_client=False)

    def _find_host(self, action: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return self._visible("Host", name, action["metadata"]["project"])
        except ActionFailed:
            raise ActionFailed("NoHost", f"host {name!r} is gone") from None


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
