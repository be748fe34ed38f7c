"""`dpufleet service ...`: a service's instances' logs, and its rolling upgrades.

- `logs NAME [--dpu DPU] [-f]`: the last lines each DPU's runtime sent (at most 200 per instance);
  `--follow` asks again every two seconds and prints only what is new.
- `rollout NAME [-w]`: where the service's upgrade stands (services/upgrade.py); `--watch` follows it
  until it completes, rolls back or halts (exit 1 for the last two).
- `undo NAME`: put back what the service's instances ran before: during an upgrade (or after a
  rollback) the current revision, after a completed one the previous revision (rolled like any change).
- `pause NAME` / `resume NAME`: no more instances start the upgrade (those in flight finish), and on
  again (`spec.upgrade.paused`); a DPUDeployment's service is paused with its bundle instead.
- `exec NAME [--dpu DPU] [--timeout S] -- CMD...`: run a command once inside the instance's container
  (its namespaces, limits and privileges), print its output and exit with its status.
- `move NAME --from DPU [--to DPU]`: a replicated service's instance moves off a DPU (placed
  elsewhere first); the DPU stays in `spec.placement.exclude`.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from ..client import Client
from .common import UserError, note, options

service_app = typer.Typer(help="Services on DPUs: their instances' logs and upgrades.", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project of the service")
_ENDED = ("Complete", "Paused", "RolledBack", "Halted")


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of `now` after the longest end of `before` it starts with (a log tail that moved on)."""
    for size in range(min(len(before), len(now)), 0, -1):
        if before[-size:] == now[:size]:
            return now[size:]
    return now


@service_app.command("logs")
def logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUService"),
    dpu: str | None = typer.Option(None, "--dpu", help="only the instance on this DPU"),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing new lines (Ctrl-C stops)"),
    project: str | None = _PROJECT,
) -> None:
    """Print the last lines each instance of the service wrote, prefixed by its DPU."""
    config = options(ctx).config(project)
    seen: dict[tuple[str, str], list[str]] = {}
    with Client.from_config(config) as client:
        path = f"/services/v1/projects/{config.project}/dpuservices/{name}/logs"
        while True:
            body: dict[str, Any] = client._request("GET", path, params={"dpu": dpu} if dpu else None)
            instances = body.get("instances") or []
            if not instances and not seen:
                note(f"dpuservice/{name}: no instance has sent logs yet (is it Running? see `dpufleet get svc {name}`)")
            for inst in instances:
                on, runs_on, lines = str(inst["dpu"]), str(inst.get("runsOn") or "DPU"), list(inst.get("lines") or [])
                label = on if runs_on == "DPU" else f"{on} host"  # a move: both, each with its own lines
                for line in new_lines(seen.get((on, runs_on), []), lines) if follow else lines:
                    print(f"[{label}] {line}")
                seen[(on, runs_on)] = lines
            if not follow:
                return
            try:
                time.sleep(2.0)
            except KeyboardInterrupt:
                return


@service_app.command("exec")
def exec_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUService"),
    command: list[str] = typer.Argument(..., help="the command and its arguments (after --)"),
    dpu: str | None = typer.Option(None, "--dpu", help="the instance on this DPU (needed when it has several)"),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, max=300.0, help="seconds the command may run"),
    project: str | None = _PROJECT,
) -> None:
    """Run a command once inside one instance of the service, as the service runs (same namespaces, cgroup,
    user and capabilities); print what it wrote and exit with its exit status. Needs the right to change the
    service. The DPU's agent picks it up on its next poll (within about two seconds)."""
    config = options(ctx).config(project)
    body: dict[str, Any] = {"command": command, "timeoutSeconds": timeout}
    if dpu:
        body["dpu"] = dpu
    with Client.from_config(config, timeout=timeout + 30.0) as client:
        path = f"/services/v1/projects/{config.project}/dpuservices/{name}/exec"
        result: dict[str, Any] = client._request("POST", path, body=body)
    if result.get("error"):
        raise UserError(f"dpuservice/{name} on dpu/{result.get('dpu')}: {result['error']}")
    output = str(result.get("output") or "")
    print(output, end="" if output.endswith("\n") or not output else "\n")
    if result.get("truncated"):
        note(f"dpuservice/{name}: output cut at 64 KiB")
    code = int(result.get("exitCode") or 0)
    if code:
        raise typer.Exit(code)


def _short(revision: str | None) -> str:
    restart, _, config = (revision or "?").partition(".")
    return f"{restart[:8]}.{config[:8]}" if config else restart[:8]


def rollout_summary(doc: dict[str, Any]) -> str:
    """One line: the upgrade's phase, revisions and counts, and its message."""
    status = doc.get("status") or {}
    upgrade = status.get("upgrade") or {}
    name = doc["metadata"]["name"]
    if not upgrade:
        return f"dpuservice/{name}: no upgrade seen yet (the controller has not visited it)"
    phase = upgrade.get("phase") or "Complete"
    total = int(status.get("scheduled") or 0)
    if phase == "Complete":
        line = f"dpuservice/{name}: Complete - {total} instance(s) at revision {_short(upgrade.get('currentRevision'))}"
    else:
        line = (
            f"dpuservice/{name}: {phase} - revision {_short(upgrade.get('currentRevision'))} -> "
            f"{_short(upgrade.get('updateRevision'))}: {len(upgrade.get('updated') or [])}/{total} upgraded, "
            f"{len(upgrade.get('inFlight') or {})} in flight, {len(upgrade.get('failed') or [])} failed"
        )
    explained = phase in ("RolledBack", "Halted", "Waiting", "Paused") and upgrade.get("message")
    return line + (f" - {upgrade['message']}" if explained else "")


@service_app.command("rollout")
def rollout(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUService"),
    watch: bool = typer.Option(False, "-w", "--watch", help="follow until it completes, rolls back or halts"),
    timeout: float = typer.Option(3600.0, "--timeout", min=1.0, help="stop watching after this many seconds"),
    project: str | None = _PROJECT,
) -> None:
    """Where the service's upgrade stands; with --watch, a line per change until it ends."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpuservices", name, config.project)
        line = rollout_summary(doc)
        print(line)
        deadline = time.monotonic() + timeout
        while watch and ((doc.get("status") or {}).get("upgrade") or {}).get("phase") not in _ENDED:
            if time.monotonic() > deadline:
                raise UserError(f"dpuservice/{name}: still upgrading after {timeout:.0f}s")
            try:
                time.sleep(1.0)
            except KeyboardInterrupt:
                return
            doc = client.get("dpuservices", name, config.project)
            if rollout_summary(doc) != line:
                line = rollout_summary(doc)
                print(line)
        if watch and ((doc.get("status") or {}).get("upgrade") or {}).get("phase") in ("RolledBack", "Halted"):
            raise typer.Exit(1)


@service_app.command("undo")
def undo(
    ctx: typer.Context, name: str = typer.Argument(..., help="the DPUService"), project: str | None = _PROJECT
) -> None:
    """Put back what the instances ran before (the current revision mid-upgrade, else the previous one)."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpuservices", name, config.project)
        upgrade = (doc.get("status") or {}).get("upgrade") or {}
        if upgrade.get("phase") not in (None, "Complete") and upgrade.get("template"):
            template, revision = upgrade["template"], upgrade.get("currentRevision")
        elif upgrade.get("previousTemplate"):
            template, revision = upgrade["previousTemplate"], upgrade.get("previousRevision")
        else:
            raise UserError(f"dpuservice/{name} has no earlier revision to return to")
        updated = {"kind": "DPUService", "metadata": doc["metadata"], "spec": {**doc["spec"], **template}}
        client.update(updated, config.project)
    print(f"dpuservice/{name}: returning to revision {_short(revision)} (`dpufleet service rollout {name} -w`)")


def _set_paused(ctx: typer.Context, name: str, project: str | None, paused: bool) -> None:
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpuservices", name, config.project)
        owner = (doc["metadata"].get("labels") or {}).get("dpufleet.io/deployment")
        if owner:
            verb = "pause" if paused else "resume"
            raise UserError(
                f"dpuservice/{name} belongs to dpudeployment/{owner}, which writes its spec: "
                f"`dpufleet deployment {verb} {owner}`"
            )
        client.patch("dpuservices", name, {"spec": {"upgrade": {"paused": paused}}}, config.project)
    print(f"dpuservice/{name}: " + ("paused: no more instances start the upgrade" if paused else "resumed"))


@service_app.command("pause")
def pause(
    ctx: typer.Context, name: str = typer.Argument(..., help="the DPUService"), project: str | None = _PROJECT
) -> None:
    """Start the upgrade on no more instances; those in flight finish (spec.upgrade.paused)."""
    _set_paused(ctx, name, project, True)


@service_app.command("resume")
def resume(
    ctx: typer.Context, name: str = typer.Argument(..., help="the DPUService"), project: str | None = _PROJECT
) -> None:
    """Go on with a paused upgrade."""
    _set_paused(ctx, name, project, False)


def _dpus_of(doc: dict[str, Any]) -> list[str]:
    return sorted(str(i["dpu"]) for i in (doc.get("status") or {}).get("instances") or [] if i.get("dpu"))


@service_app.command("move")
def move(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUService (placement mode Replicas)"),
    source: str = typer.Option(..., "--from", help="the DPU its instance leaves"),
    target: str | None = typer.Option(None, "--to", help="the DPU to place it on (else the scheduler chooses)"),
    wait: float = typer.Option(120.0, "--wait", help="seconds to wait for the move (0: do not wait)"),
    project: str | None = _PROJECT,
) -> None:
    """Move a replicated service's instance off a DPU: placed elsewhere first (on --to when it fits), the old
    one released once the new one is placed (and ready, with a disruption budget). The DPU stays excluded
    for this service (spec.placement.exclude) until you remove it."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpuservices", name, config.project)
        placement = doc["spec"].get("placement") or {}
        mode = placement.get("mode", "Replicas")
        if mode != "Replicas":
            how = "drain the DPU" if mode == "EveryDPU" else "edit spec.placement.dpus"
            raise UserError(f"dpuservice/{name} runs in mode {mode}: its instances do not move ({how})")
        if source not in _dpus_of(doc):
            raise UserError(
                f"dpuservice/{name} has no instance on dpu/{source} (it runs on {', '.join(_dpus_of(doc)) or 'no DPU'})"
            )
        if target is not None:
            client.get("dpus", target, config.project)  # a DPU that does not exist is a clear error here
            if target in _dpus_of(doc):
                raise UserError(f"dpuservice/{name} already runs on dpu/{target}")
        exclude = sorted({*placement.get("exclude", []), source} - ({target} if target else set()))
        change: dict[str, Any] = {"exclude": exclude}
        if target is not None:
            change["prefer"] = [target]
        client.patch("dpuservices", name, {"spec": {"placement": change}}, config.project)
        note(f"dpuservice/{name}: moving its instance off dpu/{source}" + (f" to dpu/{target}" if target else ""))
        deadline = time.monotonic() + wait
        while wait:
            doc = client.get("dpuservices", name, config.project)
            dpus = _dpus_of(doc)
            if source not in dpus and (target is None or target in dpus):
                print(f"dpuservice/{name}: moved; it runs on {', '.join(dpus)}")
                return
            if time.monotonic() > deadline:
                reason = (doc.get("status") or {}).get("pendingReason") or "see `dpufleet describe dpuservice`"
                raise UserError(f"dpuservice/{name}: not moved after {wait:g}s (on {', '.join(dpus)}): {reason}")
            time.sleep(1.0)
        print(f"dpuservice/{name}: moving (spec.placement.exclude: {', '.join(exclude)})")


@service_app.command("run-on")
def run_on(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUService"),
    where: str = typer.Argument(..., help="host (the host agent of each DPU's host) or dpu"),
    wait: float = typer.Option(120.0, "--wait", help="seconds to wait for every instance to move (0: do not wait)"),
    project: str | None = _PROJECT,
) -> None:
    """Move a service's instances between their DPUs and the hosts that carry them (spec.placement.runsOn):
    each starts at the new place and the old one stops once the new one is ready."""
    target = {"host": "Host", "dpu": "DPU"}.get(where.lower())
    if target is None:
        raise UserError(f"where: {where!r} is neither host nor dpu")
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpuservices", name, config.project)
        if (doc["spec"].get("placement") or {}).get("runsOn", "DPU") == target:
            print(f"dpuservice/{name}: already runs on the {where.lower()}")
            return
        client.patch("dpuservices", name, {"spec": {"placement": {"runsOn": target}}}, config.project)
        note(f"dpuservice/{name}: moving its instances to the {where.lower()}")
        deadline = time.monotonic() + wait
        while wait:
            status = client.get("dpuservices", name, config.project).get("status") or {}
            instances = [i for i in status.get("instances") or [] if i.get("dpu")]
            left = [i["dpu"] for i in instances if i.get("runsOn") != target or not i.get("ready")]
            if instances and not left:
                print(f"dpuservice/{name}: {len(instances)} instance(s) run on the {where.lower()}, ready")
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"dpuservice/{name}: not moved after {wait:g}s for DPU(s) {', '.join(left) or '(none placed)'}"
                )
            time.sleep(1.0)
        print(f"dpuservice/{name}: moving (spec.placement.runsOn: {target})")
