"""`dpufleet deployment ...`: a DPUDeployment (a bundle of the DPUs' OS and their services) as one thing.

- `status NAME [-w]`: the bundle's phase, revision, OS rollout and each service's upgrade; `--watch`
  prints a line per change until it is Ready or Paused.
- `history NAME`: the revisions the controller has seen (status.history), newest last.
- `pause NAME` / `resume NAME`: hold the whole bundle (no DPU starts an OS update, no instance an
  upgrade; what is under way finishes), and go on.
- `undo NAME [--to-revision N]`: write the previous revision's spec back (or revision N's): the OS and
  every service return together, rolled like any change (OS first).
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .common import UserError, options

deployment_app = typer.Typer(help="DPUDeployments: a bundle's status, revisions, pause and undo.", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project of the DPUDeployment")
_NAME = typer.Argument(..., help="the DPUDeployment")


def summary(doc: dict[str, Any]) -> list[str]:
    """The bundle in a few lines: phase and revision, the OS rollout, each service."""
    name = doc["metadata"]["name"]
    status = doc.get("status") or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    paused = " (spec.paused)" if (doc.get("spec") or {}).get("paused") else ""
    lines = [
        f"dpudeployment/{name}: {status.get('phase') or 'Pending'}{paused} - revision {status.get('revision', '?')}"
        + (f" - {ready['message']}" if ready.get("message") else "")
    ]
    ds = status.get("dpuSet") or {}
    if ds:
        lines.append(
            f"  os: dpuset/{ds.get('name')} {ds.get('phase')} - {ds.get('ready', 0)}/{ds.get('dpus', 0)} ready, "
            f"{ds.get('updated', 0)} updated"
        )
    for service, st in sorted((status.get("services") or {}).items()):
        lines.append(
            f"  {service}: dpuservice/{st.get('dpuService')} {st.get('upgrade')} - "
            f"{st.get('running', 0)}/{st.get('desired', 0)} running"
        )
    return lines


@deployment_app.command("status")
def status_cmd(
    ctx: typer.Context,
    name: str = _NAME,
    watch: bool = typer.Option(False, "-w", "--watch", help="follow until Ready or Paused"),
    timeout: float = typer.Option(3600.0, "--timeout", min=1.0, help="stop watching after this many seconds"),
    project: str | None = _PROJECT,
) -> None:
    """Where the bundle stands: its phase and revision, the OS rollout, each service's upgrade."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpudeployments", name, config.project)
        shown = summary(doc)
        print("\n".join(shown))
        deadline = time.monotonic() + timeout
        while watch and (doc.get("status") or {}).get("phase") not in ("Ready", "Paused"):
            if time.monotonic() > deadline:
                raise UserError(f"dpudeployment/{name}: not Ready after {timeout:.0f}s")
            try:
                time.sleep(1.0)
            except KeyboardInterrupt:
                return
            doc = client.get("dpudeployments", name, config.project)
            if summary(doc) != shown:
                shown = summary(doc)
                print("\n".join(shown))


def _what(spec: dict[str, Any]) -> str:
    image = ((spec.get("dpuSet") or {}).get("template") or {}).get("image")
    services = ", ".join(sorted(spec.get("services") or {}))
    return (f"os {image}; " if image else "") + f"services {services}"


@deployment_app.command("history")
def history_cmd(ctx: typer.Context, name: str = _NAME, project: str | None = _PROJECT) -> None:
    """The revisions of the bundle the controller has seen, newest last (the current one marked)."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpudeployments", name, config.project)
    status = doc.get("status") or {}
    history = status.get("history") or []
    if not history:
        raise UserError(f"dpudeployment/{name}: no revision seen yet (the controller has not visited it)")
    table = Table("REVISION", "SEEN", "DIGEST", "WHAT", box=None)
    for entry in history:
        mark = " (current)" if entry["revision"] == status.get("revision") else ""
        table.add_row(f"{entry['revision']}{mark}", entry["seenAt"], entry["digest"], _what(entry["spec"]))
    Console(width=200).print(table)


def _set_paused(ctx: typer.Context, name: str, project: str | None, paused: bool) -> None:
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        client.patch("dpudeployments", name, {"spec": {"paused": paused}}, config.project)
    if paused:
        print(f"dpudeployment/{name} paused: no DPU starts an OS update and no instance an upgrade")
    else:
        print(f"dpudeployment/{name} resumed")


@deployment_app.command("pause")
def pause_cmd(ctx: typer.Context, name: str = _NAME, project: str | None = _PROJECT) -> None:
    """Hold the whole bundle where it is; what is under way finishes."""
    _set_paused(ctx, name, project, True)


@deployment_app.command("resume")
def resume_cmd(ctx: typer.Context, name: str = _NAME, project: str | None = _PROJECT) -> None:
    """Go on with a paused bundle."""
    _set_paused(ctx, name, project, False)


@deployment_app.command("undo")
def undo_cmd(
    ctx: typer.Context,
    name: str = _NAME,
    to_revision: int | None = typer.Option(None, "--to-revision", min=1, help="this revision (else the previous)"),
    project: str | None = _PROJECT,
) -> None:
    """Put back an earlier revision of the whole bundle (its OS and every service), rolled OS first."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        doc = client.get("dpudeployments", name, config.project)
        status = doc.get("status") or {}
        history = status.get("history") or []
        current = status.get("revision")
        if to_revision is None:
            earlier = [h for h in history if h["revision"] != current]
            if not earlier:
                raise UserError(f"dpudeployment/{name} has no earlier revision to return to")
            entry = max(earlier, key=lambda h: h["revision"])
        else:
            entry = next((h for h in history if h["revision"] == to_revision), None)
            if entry is None:
                kept = ", ".join(str(h["revision"]) for h in history) or "none"
                raise UserError(f"--to-revision: dpudeployment/{name} keeps no revision {to_revision} (kept: {kept})")
            if entry["revision"] == current:
                raise UserError(f"--to-revision: {to_revision} is the revision dpudeployment/{name} runs now")
        spec = {**entry["spec"], "paused": bool((doc.get("spec") or {}).get("paused"))}
        client.update({"kind": "DPUDeployment", "metadata": doc["metadata"], "spec": spec}, config.project)
    print(
        f"dpudeployment/{name}: returning to revision {entry['revision']} ({_what(entry['spec'])}); "
        f"`dpufleet deployment status {name} -w` follows it"
    )
