"""`dpufleet service logs NAME [--dpu DPU] [-f]`: what a service's instances wrote, DPU by DPU.

The lines are the last ones each DPU's runtime sent (at most 200 per instance); `--follow` asks
again every two seconds and prints only what is new.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from ..client import Client
from .common import note, options

service_app = typer.Typer(help="Services on DPUs: their instances' logs.", no_args_is_help=True)


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
    project: str | None = typer.Option(None, "-p", "--project", help="project of the service"),
) -> None:
    """Print the last lines each instance of the service wrote, prefixed by its DPU."""
    config = options(ctx).config(project)
    seen: dict[str, list[str]] = {}
    with Client.from_config(config) as client:
        path = f"/services/v1/projects/{config.project}/dpuservices/{name}/logs"
        while True:
            body: dict[str, Any] = client._request("GET", path, params={"dpu": dpu} if dpu else None)
            instances = body.get("instances") or []
            if not instances and not seen:
                note(f"dpuservice/{name}: no instance has sent logs yet (is it Running? see `dpufleet get svc {name}`)")
            for inst in instances:
                where, lines = str(inst["dpu"]), list(inst.get("lines") or [])
                for line in new_lines(seen.get(where, []), lines) if follow else lines:
                    print(f"[{where}] {line}")
                seen[where] = lines
            if not follow:
                return
            try:
                time.sleep(2.0)
            except KeyboardInterrupt:
                return
