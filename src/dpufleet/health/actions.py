"""Carrying out remediation actions: Redfish resets, provisioning's retry, quarantine, alerts.

Each action returns (result, message); it raises only for unexpected errors. Results:
Succeeded (the request was accepted), Failed (the device refused), NotAvailable (dpufleet
cannot do this here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from ..api.errors import Conflict, NotFound
from ..api.kinds import RemediationAction
from ..api.meta import now
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.power import RedfishPower
from ..provisioning.reinstall import request_reinstall
from ..store.store import Store
from .diagnosis import Diagnosis

A = RemediationAction

ALERTS = Gauge(
    "dpufleet_dpu_health_alert",
    "1 while a DPU has an open health alert (remediation raised it), by failure class",
    ["project", "dpu", "failure_class"],
    registry=None,
)
QUARANTINED = Gauge(
    "dpufleet_dpu_quarantined", "1 while remediation keeps a DPU quarantined", ["project", "dpu"], registry=None
)


def register_metrics(registry: CollectorRegistry) -> None:
    for collector in (ALERTS, QUARANTINED):
        with contextlib.suppress(ValueError):
            registry.register(collector)


def clear_alerts(project: str, dpu: str) -> None:
    for labels in list(ALERTS._metrics):  # prometheus_client offers no "remove labels matching"
        if labels[0] == project and labels[1] == dpu:
            with contextlib.suppress(KeyError):
                ALERTS.remove(*labels)


def clear_quarantine(project: str, dpu: str) -> None:
    with contextlib.suppress(KeyError):
        QUARANTINED.remove(project, dpu)


# --- hooks: other capabilities react to a failed DPU ------------------------------------------------------

EvacuationHook = Callable[[dict[str, Any], Diagnosis], Awaitable[None]]
EVACUATION_HOOKS: list[EvacuationHook] = []


def register_evacuation_hook(hook: EvacuationHook) -> None:
    """Called when a DPU is diagnosed out of service (and when quarantined): move its services elsewhere."""
    EVACUATION_HOOKS.append(hook)


# Classes after which a DPU's workloads should move (a disk or clock problem, a silent agent or BMC do not stop it).
OUT_OF_SERVICE = frozenset(
    {"OSHang", "KernelCrash", "NICFirmwareCrash", "PowerLoss", "PCIeError", "CorruptedFlash", "MemoryFailure"}
)


async def run_evacuation_hooks(dpu: dict[str, Any], diagnosis: Diagnosis) -> list[str]:
    errors: list[str] = []
    for hook in list(EVACUATION_HOOKS):
        try:
            await hook(dpu, diagnosis)
        except Exception as exc:  # a hook's failure must not stop remediation
            errors.append(f"{getattr(hook, '__name__', hook)}: {exc}")
    return errors


@dataclass
class ActionContext:
    store: Store
    dpu: dict[str, Any]
    client: RedfishClient | None
    system: str | None
    reset_manager: str | None
    diagnosis: Diagnosis


async def execute(action: RemediationAction, ctx: ActionContext) -> tuple[str, str]:
    try:
        return await _execute(action, ctx)
    except RedfishError as exc:
        return "Failed", str(exc)


async def _power(ctx: ActionContext, *reset_types: str) -> tuple[str, str]:
    if ctx.client is None or ctx.system is None:
        return "NotAvailable", "the DPU has no reachable BMC"
    power = RedfishPower(ctx.client, ctx.system)
    for reset_type in reset_types:
        await power.reset(reset_type)
    return "Succeeded", "ComputerSystem.Reset " + " then ".join(reset_types)


async def _execute(action: RemediationAction, ctx: ActionContext) -> tuple[str, str]:
    meta = ctx.dpu["metadata"]
    if action == A.WAIT:
        return "Succeeded", "waited"
    if action == A.RESTART_AGENT:
        return "NotAvailable", (
            "the agent channel carries no instructions to the agent (it only reports and pulls install orders), "
            "and a BMC cannot restart a process in the DPU's OS"
        )
    if action == A.REBOOT:
        return await _power(ctx, "ForceRestart")
    if action == A.POWER_CYCLE:
        return await _power(ctx, "ForceOff", "On")
    if action == A.POWER_ON:
        return await _power(ctx, "On")
    if action == A.HOST_POWER_CYCLE:
        return await _host_power_cycle(ctx)
    if action == A.BMC_RESET:
        if ctx.client is None or ctx.reset_manager is None:
            return "NotAvailable", "the BMC does not answer or offers no Manager.Reset"
        await ctx.client.post(ctx.reset_manager, {"ResetType": "GracefulRestart"})
        return "Succeeded", "Manager.Reset GracefulRestart"
    if action == A.REFLASH:
        return await ctx.store.call(request_reinstall, ctx.store, ctx.dpu, "health")
    if action == A.QUARANTINE:
        message = await ctx.store.call(_quarantine, ctx.store, meta["project"], meta["name"])
        QUARANTINED.labels(meta["project"], meta["name"]).set(1)
        ALERTS.labels(meta["project"], meta["name"], str(ctx.diagnosis.failure_class)).set(1)
        return "Succeeded", message
    if action == A.ALERT:
        ALERTS.labels(meta["project"], meta["name"], str(ctx.diagnosis.failure_class)).set(1)
        return "Succeeded", f"alert raised: {ctx.diagnosis.failure_class}: {ctx.diagnosis.message}"
    return "NotAvailable", f"unknown action {action}"


async def _host_power_cycle(ctx: ActionContext) -> tuple[str, str]:
    """The host and the DPU power-cycled together, in the host's boot order, by a PowerAction.

    The PowerAction controller (fleet/power.py) carries it out: the DPU through its BMC, the
    host through its own BMC (Host.spec.bmcRef; drivers/redfish/hostbmc.py), each step recorded
    before it is sent. A DPU whose host has no power driver configured is power-cycled on its own,
    which the result says.
    """
    host = await ctx.store.call(_host_of, ctx.store, ctx.dpu)
    spec = (host or {}).get("spec") or {}
    if host is None or not (spec.get("bmcRef") or spec.get("powerURL")):
        why = (
            "the DPU is in no known host"
            if host is None
            else f"host {host['metadata']['name']} has no spec.bmcRef nor spec.powerURL"
        )
        result, message = await _power(ctx, "ForceOff", "On")
        return result, f"{message} (DPU side only: {why})"
    name = await ctx.store.call(_create_power_action, ctx.store, ctx.dpu)
    order = (host.get("spec") or {}).get("bootOrder") or "dpu-first"
    return (
        "Succeeded",
        f"poweraction/{name}: PowerCycle of host {host['metadata']['name']} and the DPU, bootOrder {order}",
    )


def _host_of(store: Store, dpu: dict[str, Any]) -> dict[str, Any] | None:
    name = (dpu.get("status") or {}).get("host") or (dpu.get("spec") or {}).get("hostRef")
    if not name:
        return None
    try:
        return store.get("Host", name, dpu["metadata"]["project"])
    except NotFound:
        return None


def _create_power_action(store: Store, dpu: dict[str, Any]) -> str:
    meta = dpu["metadata"]
    name = f"{meta['name']}-remediation-{int(now().timestamp())}"
    store.create(
        {
            "kind": "PowerAction",
            "metadata": {
                "name": name,
                "project": meta["project"],
                "labels": {"dpufleet.io/remediation": "host-power-cycle", "dpufleet.io/dpu": meta["name"]},
            },
            "spec": {"target": {"kind": "DPU", "name": meta["name"]}, "mode": "both", "resetType": "PowerCycle"},
        }
    )
    return name


def _quarantine(store: Store, project: str, name: str) -> str:
    for _ in range(8):
        dpu = store.get("DPU", name, project)
        if (dpu.get("spec") or {}).get("unschedulable"):
            return "already unschedulable"
        dpu["spec"]["unschedulable"] = True
        try:
            store.update(dpu)
        except Conflict:
            continue
        return "spec.unschedulable set: no new workloads are placed on the DPU"
    raise Conflict("could not set spec.unschedulable: the DPU kept changing")
