"""`dpufleet rollout`: follow and steer a DPUSet's rollout."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import UserError, options

rollout_app = typer.Typer(help="Follow and steer DPUSet rollouts.", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project of the DPUSet")


def _summary(dpuset: dict[str, Any]) -> str:
    st = dpuset.get("status") or {}
    ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "RolledOut"), {})
    return (
        f"dpuset/{dpuset['metadata']['name']}: {st.get('phase') or 'Pending'} - {st.get('ready', 0)}/{st.get('dpus', 0)} "
        f"ready, {st.get('updated', 0)} updated, {st.get('unavailable', 0)} unavailable "
        f"(max {st.get('maxUnavailable', 0)}), {st.get('failed', 0)} failed"
        + (f" - {ready['message']}" if ready.get("message") else "")
    )


@rollout_app.command("status")
def status_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the DPUSet"),
    watch: bool = typer.Option(False, "-w", "--watch", help="a live progress bar until the rollout ends"),
    timeout: float = typer.Option(3600.0, "--timeout", min=1.0, help="stop watching after this many seconds"),
    project: str | None = _PROJECT,
) -> None:
    """Where a rollout stands; with --watch, a live progress bar until it completes or halts."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        dpuset = client.get("dpusets", name, config.project)
        if not watch:
            print(_summary(dpuset))
            return
        deadline = time.monotonic() + timeout
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(name, total=max(1, (dpuset.get("status") or {}).get("dpus", 1)))
            while True:
                st = dpuset.get("status") or {}
                progress.update(
                    task,
                    total=max(1, st.get("dpus", 1)),
                    completed=st.get("ready", 0),
                    description=f"{name} {st.get('phase') or 'Pending'} ({st.get('unavailable', 0)} unavailable)",
                )
                ended = ("Complete", "Halted", "CanaryHold", "Paused", "Aborted")
                if st.get("phase") in ended or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
                dpuset = client.get("dpusets", name, config.project)
        print(_summary(dpuset))
        if (dpuset.get("status") or {}).get("phase") in ("Halted", "Aborted"):
            raise typer.Exit(1)


def _patch(ctx: typer.Context, name: str, project: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        result: dict[str, Any] = client.patch("dpusets", name, {"spec": spec}, config.project)
        return result


@rollout_app.command("pause")
def pause_cmd(ctx: typer.Context, name: str = typer.Argument(...), project: str | None = _PROJECT) -> None:
    """Start no more DPUs (those already updating finish)."""
    _patch(ctx, name, project, {"paused": True})
    print(f"dpuset/{name} paused")


@rollout_app.command("abort")
def abort_cmd(ctx: typer.Context, name: str = typer.Argument(...), project: str | None = _PROJECT) -> None:
    """Stop the rollout: no more DPUs start; those not yet writing get their running image back.

    DPUs that are writing or rebooting finish (a flash is never interrupted). `resume` goes on."""
    _patch(ctx, name, project, {"aborted": True})
    print(f"dpuset/{name} aborted: no more DPUs start; DPUs not yet writing return to the image they run")


@rollout_app.command("resume")
def resume_cmd(ctx: typer.Context, name: str = typer.Argument(...), project: str | None = _PROJECT) -> None:
    """Continue a paused or aborted rollout, or promote a canary that holds."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        dpuset = client.get("dpusets", name, config.project)
    spec: dict[str, Any] = {"paused": False, "aborted": False}
    if (dpuset.get("status") or {}).get("phase") == "CanaryHold":
        spec["strategy"] = {"type": "RollingUpdate"}
    _patch(ctx, name, project, spec)
    print(f"dpuset/{name} resumed" + (" (canary promoted)" if "strategy" in spec else ""))


@rollout_app.command("undo")
def undo_cmd(ctx: typer.Context, name: str = typer.Argument(...), project: str | None = _PROJECT) -> None:
    """Roll back to the previous template (image and flavor)."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        dpuset = client.get("dpusets", name, config.project)
    previous = (dpuset.get("status") or {}).get("previousTemplate") or {}
    if not previous:
        raise UserError(f"dpuset/{name} has no previous template to return to")
    template = {"image": previous.get("image"), "flavor": previous.get("flavor")}
    _patch(ctx, name, project, {"template": template, "paused": False})
    print(
        f"dpuset/{name} rolling back to image {template['image']}"
        + (f", flavor {template['flavor']}" if template["flavor"] else "")
    )
