"""`dpufleet reset`: controlled resets of a DPU or a host, as PowerAction objects.

The command creates the PowerAction (the `power-action` sub-action: audited, and refused with
403 for a caller who may not) and, with --wait, prints each step as it completes.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import typer

from ..api.kinds import PowerMode, ResetType
from ..client import Client
from .common import UserError, options

reset_app = typer.Typer(help="Controlled resets of DPUs and hosts (PowerAction).", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project of the PowerAction (owns or leases the target)")
_WAIT = typer.Option(False, "--wait", "-w", help="follow the action, printing its steps as they complete")
_TIMEOUT = typer.Option(1800.0, "--timeout", min=1.0, help="stop waiting after this many seconds")
_HOST_MODES = {"host-only": PowerMode.HOST_ONLY, "both": PowerMode.BOTH, "all-dpus": PowerMode.ALL_DPUS_OF_HOST}


def _name(target: str) -> str:
    return f"reset-{target[:48].rstrip('-.')}-{secrets.token_hex(3)}"


def _run(
    ctx: typer.Context,
    kind: str,
    name: str,
    mode: PowerMode,
    reset_type: ResetType,
    wait: bool,
    timeout: float,
    project: str | None,
) -> None:
    config = options(ctx).config(project)
    doc = {
        "kind": "PowerAction",
        "metadata": {"name": _name(name)},
        "spec": {"target": {"kind": kind, "name": name}, "mode": str(mode), "resetType": str(reset_type)},
    }
    with options(ctx).client() as client:
        created = client.create(doc, config.project)
        action_name = created["metadata"]["name"]
        print(f"poweraction/{action_name} created: {mode} {reset_type} of {kind.lower()}/{name}")
        if wait:
            _follow(client, action_name, config.project, timeout)


def _follow(client: Client, name: str, project: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    shown_impact = False
    printed = 0
    while True:
        action: dict[str, Any] = client.get("poweractions", name, project)
        status = action.get("status") or {}
        if status.get("hostImpact") and not shown_impact:
            print(f"host impact: {status['hostImpact']}")
            shown_impact = True
        steps = status.get("steps") or []
        while printed < len(steps) and steps[printed].get("result") in ("Succeeded", "Failed"):
            step = steps[printed]
            when = step.get("finished") or step.get("when") or ""
            message = f" - {step['message']}" if step.get("message") else ""
            print(f"  {when}  {step['result']:<9} {step['what']}{message}")
            printed += 1
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            print(f"poweraction/{name}: {phase} ({status.get('reason')}: {status.get('message')})")
            if phase == "Failed":
                raise typer.Exit(1)
            return
        if time.monotonic() > deadline:
            raise UserError(f"poweraction/{name} is still {phase or 'Pending'} after {timeout:g}s")
        time.sleep(0.5)


@reset_app.command("dpu")
def reset_dpu(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPU"),
    reset_type: ResetType = typer.Option(ResetType.FORCE_RESTART, "--type", help="Redfish reset type"),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
    project: str | None = _PROJECT,
) -> None:
    """Reset one DPU through its BMC; the host stays up without the DPU's functions meanwhile."""
    _run(ctx, "DPU", name, PowerMode.DPU_ONLY, reset_type, wait, timeout, project)


@reset_app.command("host")
def reset_host(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the Host"),
    mode: str = typer.Option(..., "--mode", help="host-only | both | all-dpus"),
    reset_type: ResetType = typer.Option(ResetType.FORCE_RESTART, "--type", help="Redfish reset type"),
    wait: bool = _WAIT,
    timeout: float = _TIMEOUT,
    project: str | None = _PROJECT,
) -> None:
    """Reset a host (host-only), a host and its DPUs in its boot order (both), or all its DPUs (all-dpus)."""
    if mode not in _HOST_MODES:
        raise UserError(f"--mode {mode!r}: use one of {', '.join(_HOST_MODES)}")
    _run(ctx, "Host", name, _HOST_MODES[mode], reset_type, wait, timeout, project)
