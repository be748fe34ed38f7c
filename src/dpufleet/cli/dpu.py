"""`dpufleet dpu retry|abort|hold|release NAME`: the operator's way out of every provisioning phase.

Each is a small change the provisioning controller acts on: retry and abort are
annotations carrying a fresh token (so the same action can be asked again), hold and
release set spec.held. The command prints what the DPU looks like afterwards.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import typer

from ..api.meta import isotime, now
from ..client import Client, ClientError
from .common import UserError, note, options

dpu_app = typer.Typer(
    help="Act on a DPU: retry, abort, hold, release (provisioning); drain, undrain (services).", no_args_is_help=True
)

RETRY = "dpufleet.io/retry"
ABORT = "dpufleet.io/abort"
_PROJECT = typer.Option(None, "-p", "--project", help="project of the DPU")
_WAIT = typer.Option(5.0, "--wait", help="seconds to wait for the controller to act (0: do not wait)")


def _token() -> str:
    return f"{isotime(now())}/{secrets.token_hex(3)}"


def _summary(dpu: dict[str, Any]) -> str:
    status = dpu.get("status") or {}
    prov = status.get("provisioning") or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    parts = [f"dpu/{dpu['metadata']['name']}: phase {status.get('phase') or '-'}"]
    if prov.get("reason") and str(status.get("phase", "")).endswith("Failed"):
        parts.append(f"reason {prov['reason']}")
    if ready:
        parts.append(f"Ready={ready.get('status')} ({ready.get('reason')})")
    return ", ".join(parts)


def _act(ctx: typer.Context, name: str, project: str | None, patch: dict[str, Any], verb: str, wait: float) -> None:
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        before = client.get("dpu", name, config.project)
        client.patch("dpu", name, patch, config.project)
        note(f"dpu/{name}: {verb} requested (phase was {(before.get('status') or {}).get('phase') or '-'})")
        deadline = time.monotonic() + wait
        current = before
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = client.get("dpu", name, config.project)
            if (current.get("status") or {}).get("phase") != (before.get("status") or {}).get("phase"):
                break
        print(_summary(current))


@dpu_app.command("retry")
def retry(ctx: typer.Context, name: str, project: str | None = _PROJECT, wait: float = _WAIT) -> None:
    """Run the failed step again (from a *Failed phase), or resume after an abort."""
    _act(ctx, name, project, {"metadata": {"annotations": {RETRY: _token()}}}, "retry", wait)


@dpu_app.command("abort")
def abort(ctx: typer.Context, name: str, project: str | None = _PROJECT, wait: float = _WAIT) -> None:
    """Stop provisioning and go back to Available (refused while the device is flashing or rebooting)."""
    _act(ctx, name, project, {"metadata": {"annotations": {ABORT: _token()}}}, "abort", wait)


@dpu_app.command("hold")
def hold(ctx: typer.Context, name: str, project: str | None = _PROJECT, wait: float = _WAIT) -> None:
    """Hands off: the controllers take no action on this DPU until it is released."""
    _act(ctx, name, project, {"spec": {"held": True}}, "hold", wait)


@dpu_app.command("release")
def release(ctx: typer.Context, name: str, project: str | None = _PROJECT, wait: float = _WAIT) -> None:
    """End a hold: provisioning resumes where it stood."""
    _act(ctx, name, project, {"spec": {"held": False}}, "release", wait)


DRAIN = "dpufleet.io/drain"


def _instances(client: Client, name: str, project: str) -> list[str]:
    """The service instances the DPU's allocation record still holds."""
    try:
        record = client.get("dpuallocation", name, project)
    except ClientError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(str(i.get("instance") or i.get("service")) for i in (record.get("spec") or {}).get("instances") or [])


@dpu_app.command("drain")
def drain(
    ctx: typer.Context,
    name: str,
    project: str | None = _PROJECT,
    wait: float = typer.Option(120.0, "--wait", help="seconds to wait for its instances to leave (0: do not wait)"),
) -> None:
    """Before maintenance: no new service instances, and those it runs move elsewhere (replicated services
    are placed elsewhere before they leave) or stop (every-DPU and listed services)."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        client.patch("dpu", name, {"metadata": {"annotations": {DRAIN: _token()}}, "spec": {"unschedulable": True}},
                     config.project)  # fmt: skip
        left = _instances(client, name, config.project)
        note(f"dpu/{name}: draining (unschedulable), {len(left)} service instance(s) on it")
        deadline = time.monotonic() + wait
        shown = left
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _instances(client, name, config.project)
            if left != shown:
                note(f"dpu/{name}: {len(left)} left" + (f": {', '.join(left)}" if left else ""))
                shown = left
    if left:
        if wait:
            raise UserError(
                f"dpu/{name}: still holds {', '.join(left)} after {wait:g}s (a replicated service with nowhere "
                "else to go keeps its instance, and a service's disruption budget keeps it while others are "
                "unavailable); it stays unschedulable: see `dpufleet describe dpuservice` (DisruptionAllowed)"
            )
        print(f"dpu/{name}: draining, {len(left)} instance(s) left")
        return
    print(f"dpu/{name}: drained (no service instances; unschedulable until `dpufleet dpu undrain {name}`)")


@dpu_app.command("undrain")
def undrain(ctx: typer.Context, name: str, project: str | None = _PROJECT) -> None:
    """After maintenance: the DPU takes service instances again."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        client.patch("dpu", name, {"metadata": {"annotations": {DRAIN: None}}, "spec": {"unschedulable": False}},
                     config.project)  # fmt: skip
    print(f"dpu/{name}: schedulable again")
