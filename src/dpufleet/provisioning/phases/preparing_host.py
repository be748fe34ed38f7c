"""PreparingHost: protect the host's workloads before the DPU goes away, per the host policy.

Only for a disruptive plan: a live update (no reset step) leaves the host alone.

none: nothing. taint: the Host gets the annotation `dpufleet.io/dpu-maintenance.<dpu>`, which
schedulers read to stop placing work. drain: the annotation `dpufleet.io/drain-request.<dpu>`,
then wait until the host's workload manager answers `dpufleet.io/drain-ack.<dpu>` (bounded by
the phase timeout). hook: POST to the host's spec.hookURL; any 2xx answer lets us go on.
Everything is undone when the DPU is Ready or provisioning is aborted (`release_host`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from ...api.errors import NotFound
from ...api.kinds import Phase
from ...lifecycle.planner import StepAction
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed, Wait, stamp

TAINT = "dpufleet.io/dpu-maintenance."
DRAIN_REQUEST = "dpufleet.io/drain-request."
DRAIN_ACK = "dpufleet.io/drain-ack."


def host_of(dpu: dict[str, Any]) -> str | None:
    spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
    host = spec.get("hostRef") or status.get("host")
    return str(host) if host else None


async def _annotate(ctx: StepContext, host: str, changes: dict[str, str | None]) -> None:
    await ctx.store.call(ctx.store.patch, "Host", host, {"metadata": {"annotations": changes}}, ctx.project)


class PrepareHost(PhaseHandler):
    phase = Phase.PREPARING_HOST

    async def handle(self, ctx: StepContext) -> Outcome:
        host_name = host_of(ctx.dpu)
        plan = ctx.progress.plan
        if plan is not None and all(step["action"] == StepAction.INSTALL for step in plan):
            return Next(Phase.STAGING_IMAGE, "a live update resets nothing: the host is left undisturbed")
        if host_name is None:
            return Next(Phase.STAGING_IMAGE, "the DPU has no known host: nothing to prepare")
        try:
            host = await ctx.get("Host", host_name)
        except NotFound:
            return Next(Phase.STAGING_IMAGE, f"host {host_name} is not registered: nothing to prepare")
        policy = ctx.spec.get("hostPolicy") or (host.get("spec") or {}).get("hostPolicy") or "none"
        annotations = host["metadata"].get("annotations") or {}
        if policy == "none":
            return Next(Phase.STAGING_IMAGE, "host policy none")
        if policy == "taint":
            await _annotate(ctx, host_name, {TAINT + ctx.name: "provisioning"})
            ctx.progress.hostPrepared = True
            return Next(Phase.STAGING_IMAGE, f"host {host_name} tainted")
        if policy == "drain":
            if DRAIN_ACK + ctx.name in annotations:
                ctx.progress.hostPrepared = True
                return Next(Phase.STAGING_IMAGE, f"host {host_name} drained")
            if DRAIN_REQUEST + ctx.name not in annotations:
                ctx.progress.drainRequestedAt = stamp()
                ctx.progress.hostPrepared = True
                await _annotate(ctx, host_name, {TAINT + ctx.name: "provisioning", DRAIN_REQUEST + ctx.name: stamp()})
            return Wait(ctx.config.poll_seconds, f"waiting for host {host_name} to acknowledge the drain")
        if policy == "hook":
            url = (host.get("spec") or {}).get("hookURL")
            if not url:
                raise StepFailed(
                    "HookMissing", f"host {host_name} has hostPolicy hook but no spec.hookURL", retryable=False
                )
            body = {"event": "dpu.prepare", "dpu": ctx.name, "host": host_name, "image": ctx.image_name}
            try:
                async with httpx.AsyncClient(timeout=ctx.config.timeouts.hook_request) as http:
                    resp = await http.post(url, json=body)
            except httpx.HTTPError as exc:
                raise StepFailed("HookFailed", f"POST {url}: {type(exc).__name__}: {exc}") from None
            if not 200 <= resp.status_code < 300:
                raise StepFailed("HookFailed", f"POST {url}: HTTP {resp.status_code}: {resp.text[:200]}")
            ctx.progress.hostPrepared = True
            return Next(Phase.STAGING_IMAGE, f"hook {url} answered {resp.status_code}")
        raise StepFailed(
            "UnknownHostPolicy", f"host policy {policy!r} is not one of none, taint, drain, hook", retryable=False
        )


async def release_host(ctx: StepContext) -> None:
    """Undo what PreparingHost did (taint, drain request); the host's own ack is removed too."""
    host_name = host_of(ctx.dpu)
    if host_name is None or not ctx.progress.hostPrepared:
        return
    with contextlib.suppress(NotFound):
        await _annotate(
            ctx, host_name, {TAINT + ctx.name: None, DRAIN_REQUEST + ctx.name: None, DRAIN_ACK + ctx.name: None}
        )
    ctx.progress.hostPrepared = False
