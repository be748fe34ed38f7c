"""Reading and removing objects: get, describe, delete, watch."""

from __future__ import annotations

import sys
from typing import Any

import typer
import yaml

from ..client import Client, ClientError, KindRef
from .columns import NONE, age, cell, evaluate
from .common import note, options
from .describe_dpu import SHOWN as DPU_SHOWN
from .describe_dpu import dpu_sections
from .output import FORMATS, plain_table, print_document, print_table, resource_table

_PROJECT_HELP = "project to work in [default: $DPUFLEET_PROJECT, the login config, or 'default']"


def _check_format(output: str) -> str:
    if output not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="'-o' / '--output'")
    return output


def get(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name: dpu, dpus, host, flavor, ..."),
    names: list[str] | None = typer.Argument(None, help="names to show; all when omitted"),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label selector, e.g. 'rack=r1,tier!=edge'"),
    project: str | None = typer.Option(None, "-p", "--project", help=_PROJECT_HELP),
    all_projects: bool = typer.Option(False, "-A", "--all-projects", help="list across every project"),
    output: str = typer.Option("table", "-o", "--output", help="table, wide, yaml or json"),
) -> None:
    """List objects of a kind, or show named ones."""
    _check_format(output)
    if all_projects and project:
        raise typer.BadParameter("use either --project or --all-projects", param_hint="'-A'")
    if all_projects and names:
        raise typer.BadParameter("names need one project; drop --all-projects", param_hint="'-A'")
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        if names:
            items = [client.get(ref, name, config.project) for name in names]
        else:
            items = client.list(ref, None if all_projects else config.project, selector).items
    if output in ("yaml", "json"):
        if names and len(names) == 1:
            print_document(items[0], output)
        else:
            print_document(
                {"apiVersion": "dpufleet.io/v1alpha1", "kind": f"{ref.kind}List", "metadata": {}, "items": items},
                output,
            )
        return
    if not items:
        where = "any project" if all_projects else f"project {config.project!r}"
        note(f"No {ref.plural} found in {where}.")
        return
    print_table(resource_table(ref, items, wide=output == "wide", with_project=all_projects))


def _block(title: str, value: Any) -> list[str]:
    if value in (None, {}, []):
        return [f"{title}:".ljust(14) + NONE]
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip()
    return [f"{title}:"] + ["  " + line for line in text.splitlines()]


def _mapping_lines(title: str, mapping: dict[str, str] | None) -> list[str]:
    label = f"{title}:".ljust(14)
    if not mapping:
        return [label + NONE]
    entries = [f"{k}={v}" for k, v in sorted(mapping.items())]
    return [label + entries[0]] + [" " * 14 + e for e in entries[1:]]


def _events_for(client: Client, obj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    try:
        events = client.list("Event", meta.get("project", "default")).items
    except ClientError:
        return []
    uid = meta.get("uid")
    mine = [
        ev
        for ev in events
        if (ev.get("involvedObject") or {}).get("kind") == obj.get("kind")
        and ev["involvedObject"].get("name") == meta.get("name")
        and (not uid or not ev["involvedObject"].get("uid") or ev["involvedObject"]["uid"] == uid)
    ]
    mine.sort(key=lambda ev: ev.get("lastTimestamp") or ev["metadata"].get("creationTimestamp") or "")
    return mine[-20:]


def describe_text(client: Client, ref: KindRef, obj: dict[str, Any]) -> str:
    """kubectl-describe-like text: metadata, spec, status, conditions, then recent events."""
    meta = obj.get("metadata") or {}
    lines = [
        f"{'Name:':<14}{meta.get('name')}",
        f"{'Kind:':<14}{obj.get('kind')}",
        f"{'Project:':<14}{meta.get('project')}",
        *_mapping_lines("Labels", meta.get("labels")),
        *_mapping_lines("Annotations", meta.get("annotations")),
        f"{'UID:':<14}{meta.get('uid')}",
        f"{'Generation:':<14}{meta.get('generation')}",
        f"{'Version:':<14}{meta.get('resourceVersion')}",
        f"{'Created:':<14}{meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)",
    ]
    if meta.get("deletionTimestamp"):
        lines.append(f"{'Deleting:':<14}since {meta['deletionTimestamp']} ({age(meta['deletionTimestamp'])} ago)")
    if meta.get("finalizers"):
        lines.append(f"{'Finalizers:':<14}{', '.join(meta['finalizers'])}")
    for ref_ in meta.get("ownerReferences") or []:
        lines.append(f"{'Owned by:':<14}{ref_.get('kind')}/{ref_.get('name')}")
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "spec", "status")}
    if "spec" in obj or not body:
        lines += _block("Spec", obj.get("spec"))
    else:
        lines += _block("Details", body)
    status = {k: v for k, v in (obj.get("status") or {}).items() if v not in (None, [], {})}
    conditions = status.pop("conditions", None) or []
    if ref.has_status:
        if obj.get("kind") == "DPU":
            lines += dpu_sections(status, _render)
            status = {k: v for k, v in status.items() if k not in DPU_SHOWN}
        lines += _block("Status", status)
        lines.append("Conditions:")
        if conditions:
            table = plain_table(["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"])
            for c in conditions:
                table.add_row(
                    c.get("type", ""),
                    c.get("status", ""),
                    c.get("reason") or NONE,
                    c.get("message") or "",
                    age(c.get("lastTransitionTime")),
                )
            lines += ["  " + line for line in _render(table)]
        else:
            lines.append(f"  {NONE}")
    events = _events_for(client, obj) if obj.get("kind") != "Event" else []
    if obj.get("kind") != "Event":
        lines.append("Events:")
        if events:
            table = plain_table(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"])
            for ev in events:
                count = int(ev.get("count") or 1)
                when = age(ev.get("lastTimestamp") or ev["metadata"].get("creationTimestamp"))
                if count > 1:
                    when = f"{when} (x{count} over {age(ev.get('firstTimestamp'))})"
                table.add_row(
                    ev.get("type", ""), ev.get("reason", ""), when, ev.get("source") or NONE, ev.get("message", "")
                )
            lines += ["  " + line for line in _render(table)]
        else:
            lines.append(f"  {NONE}")
    return "\n".join(lines) + "\n"


def _render(table: Any) -> list[str]:
    from .common import stdout

    console = stdout()
    with console.capture() as capture:
        console.print(table)
    return [line.rstrip() for line in capture.get().splitlines()]


def describe(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name"),
    name: str = typer.Argument(..., help="object name"),
    project: str | None = typer.Option(None, "-p", "--project", help=_PROJECT_HELP),
) -> None:
    """Show one object in detail: metadata, spec, status, conditions and recent events."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        obj = client.get(ref, name, config.project)
        sys.stdout.write(describe_text(client, ref, obj))


def delete(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name"),
    names: list[str] = typer.Argument(..., help="names of the objects to delete"),
    project: str | None = typer.Option(None, "-p", "--project", help=_PROJECT_HELP),
) -> None:
    """Delete objects. Objects with finalizers are marked and go once their finalizers are done."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        for name in names:
            obj = client.delete(ref, name, config.project)
            finalizers = (obj.get("metadata") or {}).get("finalizers") or []
            if finalizers:
                print(
                    f'{ref.singular} "{name}" marked for deletion (waiting for finalizers: {", ".join(finalizers)})',
                    flush=True,
                )
            else:
                print(f'{ref.singular} "{name}" deleted', flush=True)


def _ready(obj: dict[str, Any]) -> str:
    value = evaluate(obj, "status.conditions[Ready].status")
    return cell(value)


def watch(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name"),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label selector"),
    project: str | None = typer.Option(None, "-p", "--project", help=_PROJECT_HELP),
    all_projects: bool = typer.Option(False, "-A", "--all-projects", help="watch every project"),
    resource_version: str | None = typer.Option(
        None, "--resource-version", help="start after this resourceVersion instead of listing current objects"
    ),
) -> None:
    """Print one line per change (EVENT NAME PHASE READY RESOURCEVERSION) until Ctrl-C.

    Current objects come first as ADDED. A dropped connection is resumed from the last
    resourceVersion; if that history is gone the watch re-lists and carries on.
    """
    if all_projects and project:
        raise typer.BadParameter("use either --project or --all-projects", param_hint="'-A'")
    config = options(ctx).config(project)
    client = Client.from_config(config)
    try:
        ref = client.resolve_kind(kind)
        print(f"{'EVENT':<10}{'NAME':<32}{'PHASE':<16}{'READY':<9}RESOURCEVERSION", flush=True)
        stream = client.watch(ref, None if all_projects else config.project, selector, resource_version)
        for event in stream:
            meta = event.object.get("metadata") or {}
            name = f"{meta.get('project')}/{meta.get('name')}" if all_projects else str(meta.get("name"))
            phase = cell((event.object.get("status") or {}).get("phase"))
            print(f"{event.type:<10}{name:<32}{phase:<16}{_ready(event.object):<9}{event.resource_version}", flush=True)
    except KeyboardInterrupt:
        return
    finally:
        client.close()


__all__ = ["delete", "describe", "get", "watch"]
