"""Reading and removing objects: get, describe, delete, watch."""

from __future__ import annotations

import sys
from typing import Any

import typer
import yaml

from ..client import Client, ClientError, KindRef
from .columns import NONE, age, cell, evaluate
from .common import note, options
from .completion import complete_kind, complete_name
from .describe_dpu import SHOWN as DPU_SHOWN
from .describe_dpu import dpu_sections
from .fieldselect import FieldSelector, FieldSelectorError, parse_field_selector
from .output import plain_table
from .printers import FORMAT_HELP, Printer, parse_output

_PROJECT_HELP = "project to work in [default: $DPUFLEET_PROJECT, the login config, or 'default']"


def _field_selector(text: str | None) -> FieldSelector | None:
    if text is None:
        return None
    try:
        return parse_field_selector(text)
    except FieldSelectorError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--field-selector'") from None


def get(
    ctx: typer.Context,
    kind: str = typer.Argument(
        ..., help="kind, plural or short name: dpu, dpus, host, flavor, ...", autocompletion=complete_kind
    ),
    names: list[str] | None = typer.Argument(
        None, help="names to show; all when omitted", autocompletion=complete_name
    ),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label selector, e.g. 'rack=r1,tier!=edge'"),
    field_selector: str | None = typer.Option(
        None, "--field-selector", help="field selector, e.g. 'status.phase=Ready,spec.hostRef!=h1' (=, ==, !=)"
    ),
    project: str | None = typer.Option(None, "-p", "--project", help=_PROJECT_HELP),
    all_projects: bool = typer.Option(False, "-A", "--all-projects", help="list across every project"),
    output: str = typer.Option("table", "-o", "--output", help=FORMAT_HELP),
    watch_changes: bool = typer.Option(False, "-w", "--watch", help="after the list, print each change until Ctrl-C"),
) -> None:
    """List objects of a kind, or show named ones; with --watch, keep printing them as they change."""
    fmt = parse_output(output)
    fields = _field_selector(field_selector)
    if all_projects and project:
        raise typer.BadParameter("use either --project or --all-projects", param_hint="'-A'")
    if all_projects and names:
        raise typer.BadParameter("names need one project; drop --all-projects", param_hint="'-A'")
    if names and (selector or field_selector):
        raise typer.BadParameter("names and selectors do not go together", param_hint="'-l' / '--field-selector'")
    config = options(ctx).config(project)
    in_project = None if all_projects else config.project
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        printer = Printer(fmt, ref, with_project=all_projects)
        if names:
            items, rv = [client.get(ref, name, config.project) for name in names], ""
        else:
            listed = client.list(ref, in_project, selector, field_selector)
            items = [obj for obj in listed.items if fields is None or fields.matches(obj)]
            rv = listed.resource_version
        if watch_changes:
            _watch_after(client, printer, items, rv, in_project, selector, field_selector, names or [])
            return
    if not items and fmt.kind in ("table", "wide", "custom-columns", "name"):
        where = "any project" if all_projects else f"project {config.project!r}"
        note(f"No {ref.plural} found in {where}.")
        return
    printer.print_list(items, single=names is not None and len(names) == 1)


def _watch_after(
    client: Client,
    printer: Printer,
    items: list[dict[str, Any]],
    rv: str,
    project: str | None,
    selector: str | None,
    field_selector: str | None,
    names: list[str],
) -> None:
    """`get -w`: the objects first, then every change to them, until Ctrl-C (exit 0)."""
    fields = _field_selector(field_selector)
    if names:  # watching named objects: the newest resourceVersion of them is where changes start
        rv = max((str(obj["metadata"].get("resourceVersion") or "") for obj in items), key=_rv_key, default="")
    try:
        printer.start_stream(items)
        stream = client.watch(printer.ref, project, selector, rv or None, field_selector=field_selector)
        for event in stream:
            meta = event.object.get("metadata") or {}
            if names and meta.get("name") not in names:
                continue
            if fields is not None and not fields.matches(event.object):
                continue
            printer.print_object(event.object)
    except KeyboardInterrupt:
        return


def _rv_key(rv: str) -> int:
    return int(rv) if rv.isdigit() else -1


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
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
    name: str = typer.Argument(..., help="object name", autocompletion=complete_name),
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
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
    names: list[str] = typer.Argument(..., help="names of the objects to delete", autocompletion=complete_name),
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
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
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
