"""`dpufleet telemetry watch` and `dpufleet telemetry accounting`: the fleet's live telemetry, and what became
of every sample each DPU produced."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from ..api.telemetry import SEVERITIES, TelemetryClass
from ..client import Client
from .common import options

telemetry_app = typer.Typer(help="Telemetry: live samples and events, and their accounting.", no_args_is_help=True)
_PROJECT = typer.Option(None, "-p", "--project", help="project")


def _line(item: dict[str, Any]) -> str:
    at = datetime.fromtimestamp(int(item.get("time", 0)) / 1e9, UTC).isoformat(timespec="milliseconds")
    attrs = ",".join(f"{k}={v}" for k, v in sorted((item.get("attributes") or {}).items()))
    what = item.get("body") or f"{item.get('value')} {item.get('unit') or ''}".rstrip()
    severity = f" [{item['severity']}]" if item.get("severity") else ""
    # a controller's event about an object other than a DPU names that object instead
    about = item.get("attributes") or {}
    who = item.get("dpu") or f"{str(about.get('object.kind', '')).lower()}/{about.get('object.name', '')}"
    return f"{at} {who} {item.get('class')} {item.get('name')}{{{attrs}}}{severity} {what}"


@telemetry_app.command("watch")
def watch(
    ctx: typer.Context,
    project: str | None = _PROJECT,
    dpu_selector: str | None = typer.Option(None, "--dpu-selector", "-l", help="label selector of the DPUs"),
    classes: list[str] = typer.Option([], "--class", help="a class to show (repeatable): " + ", ".join(TelemetryClass)),
    metrics: list[str] = typer.Option([], "--metric", help="a metric name to show (repeatable)"),
    min_severity: str | None = typer.Option(
        None, "--min-severity", help="events at least this severe: " + ", ".join(SEVERITIES)
    ),
    output: str = typer.Option(
        "text", "-o", "--output", help="text (one line per sample) or json (one object per line)"
    ),
    limit: int = typer.Option(0, "--limit", min=0, help="stop after this many samples (0: until interrupted)"),
) -> None:
    """Stream the live samples and events of a project's DPUs, filtered on the server."""
    for cls in classes:
        for part in cls.split(","):
            if part and part not in {c.value for c in TelemetryClass}:
                raise typer.BadParameter(
                    f"unknown class {part!r} (known: {', '.join(TelemetryClass)})", param_hint="'--class'"
                )
    if min_severity is not None and min_severity not in SEVERITIES:
        raise typer.BadParameter(
            f"{min_severity!r} is not one of {', '.join(SEVERITIES)}", param_hint="'--min-severity'"
        )
    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r}: expected text or json", param_hint="'--output'")
    params: dict[str, str] = {}
    if dpu_selector:
        params["dpuSelector"] = dpu_selector
    if classes:
        params["class"] = ",".join(classes)
    if metrics:
        params["metric"] = ",".join(metrics)
    if min_severity:
        params["minSeverity"] = min_severity
    config = options(ctx).config(project)
    shown = 0
    with Client.from_config(config) as client:
        for item in client.telemetry_watch(config.project, params):
            if item.get("type") == "WATCHING":
                continue
            print(json.dumps(item) if output == "json" else _line(item), flush=True)
            shown += 1
            if limit and shown >= limit:
                return


@telemetry_app.command("accounting")
def accounting(ctx: typer.Context, project: str | None = _PROJECT) -> None:
    """Per DPU and class: samples produced, delivered to the bus, dropped (by reason), still buffered (ON-HOST:
    the part its host keeps)."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        items = client.telemetry_accounting(config.project)
    print(
        f"{'DPU':<28} {'CLASS':<14} {'PRODUCED':>9} {'DELIVERED':>9} {'DROPPED':>8} {'BUFFERED':>8} {'ON-HOST':>8} "
        f"{'RECEIVED':>8}"
    )
    for item in items:
        agent = item.get("agent") or {}
        produced: dict[str, int] = agent.get("produced") or {}
        for cls in sorted(set(produced) | set(item.get("received") or {})):
            dropped = sum((by.get(cls, 0) for by in (agent.get("dropped") or {}).values()), 0)
            print(
                f"{item['dpu']:<28} {cls:<14} {produced.get(cls, 0):>9} {(agent.get('delivered') or {}).get(cls, 0):>9} "
                f"{dropped:>8} {(agent.get('buffered') or {}).get(cls, 0):>8} "
                f"{(agent.get('bufferedOnHost') or {}).get(cls, 0):>8} {(item.get('received') or {}).get(cls, 0):>8}"
            )


@telemetry_app.command("rollup")
def rollup(
    ctx: typer.Context,
    metric: str = typer.Option(..., "--metric", help="the metric to sum up, e.g. hw.power"),
    by: str = typer.Option("host", "--by", help="host, vendor, model, dpuset or label:<key>"),
    match: list[str] = typer.Option([], "--match", help="an attribute the series must carry, key=value (repeatable)"),
    output: str = typer.Option("text", "-o", "--output", help="text (a table) or json"),
    project: str | None = _PROJECT,
) -> None:
    """One metric's latest values per host, vendor, model, DPUSet or label: DPUs, series, sum, min, mean, max."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        result = client.telemetry_rollup(config.project, metric, by, ",".join(match) or None)
    if output == "json":
        print(json.dumps(result, indent=2))
        return
    groups = result.get("groups") or []
    if not groups:
        print(f"no DPU of project {config.project} has a recent sample of {metric}")
        return
    width = max(len("GROUP"), *(len(str(g["group"])) for g in groups))
    print(f"{'GROUP':<{width}} {'DPUS':>5} {'SERIES':>6} {'SUM':>12} {'MIN':>10} {'MEAN':>10} {'MAX':>10}")
    for g in groups:
        print(f"{g['group']:<{width}} {g['dpus']:>5} {g['series']:>6} {g['sum']:>12.6g} {g['min']:>10.6g} "
              f"{g['mean']:>10.6g} {g['max']:>10.6g}")  # fmt: skip
