"""`dpufleet label` and `dpufleet annotate`: change a few keys of objects' metadata, as kubectl does.

Arguments are names and changes mixed: `key=value` sets, `key-` removes, anything else is an
object name (or use `-l` to select objects). Changing a key that already has another value needs
`--overwrite`. Each object is changed by a JSON merge patch carrying the resourceVersion it was
checked at, so a value someone sets meanwhile is never overwritten unseen: the object is read
and checked again. Label keys and values are validated by the server (its message names the
rule broken); annotation keys follow the same key rule, checked here since the server takes any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer

from ..api.meta import check_label_key
from ..client import Client, ClientError, KindRef
from .common import UserError, note, options
from .completion import complete_kind, complete_name

ATTEMPTS = 5


@dataclass(frozen=True)
class Changes:
    sets: dict[str, str]
    removals: tuple[str, ...]


def split_arguments(args: list[str], what: str) -> tuple[list[str], Changes]:
    """Names, and the key=value / key- changes, in the order given."""
    names: list[str] = []
    sets: dict[str, str] = {}
    removals: list[str] = []
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            if not key:
                raise typer.BadParameter(f"{arg!r}: the {what} key is empty", param_hint="KEY=VALUE")
            sets[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            removals.append(arg[:-1])
        else:
            names.append(arg)
    both = sorted(set(sets) & set(removals))
    if both:
        raise typer.BadParameter(f"{both[0]!r} is both set and removed", param_hint="KEY=VALUE / KEY-")
    if not sets and not removals:
        raise typer.BadParameter(f"give at least one {what} change: KEY=VALUE or KEY-", param_hint="KEY=VALUE")
    return names, Changes(sets, tuple(removals))


def _patch_for(obj: dict[str, Any], field: str, changes: Changes, overwrite: bool) -> dict[str, str | None]:
    """The merge patch of metadata.<field>; refuses to change an existing value without --overwrite."""
    current: dict[str, str] = (obj.get("metadata") or {}).get(field) or {}
    patch: dict[str, str | None] = {}
    for key, value in changes.sets.items():
        if key in current and current[key] != value and not overwrite:
            raise UserError(f"{key!r} already has a value ({current[key]}), and --overwrite is false")
        if current.get(key) != value:
            patch[key] = value
    for key in changes.removals:
        if key in current:
            patch[key] = None
    return patch


def change_metadata(
    client: Client, ref: KindRef, objects: list[dict[str, Any]], field: str, changes: Changes, overwrite: bool
) -> list[tuple[str, bool]]:
    """Patch every object; (name, changed) for each. All are checked before any is changed."""
    for obj in objects:
        try:
            _patch_for(obj, field, changes, overwrite)
        except UserError as exc:
            raise UserError(f"{ref.singular}/{obj['metadata']['name']}: {exc}") from None
    done = []
    for obj in objects:
        meta = obj["metadata"]
        for key in changes.removals:
            if key not in (meta.get(field) or {}):
                note(f'{field[:-1]} "{key}" not found on {ref.singular}/{meta["name"]}.')
        done.append((meta["name"], _patch_one(client, ref, obj, field, changes, overwrite)))
    return done


def _patch_one(
    client: Client, ref: KindRef, obj: dict[str, Any], field: str, changes: Changes, overwrite: bool
) -> bool:
    meta = obj["metadata"]
    for _ in range(ATTEMPTS):
        patch = _patch_for(obj, field, changes, overwrite)
        if not patch:
            return False
        body = {"metadata": {field: patch, "resourceVersion": meta["resourceVersion"]}}
        try:
            client.patch(ref, meta["name"], body, meta["project"])
            return True
        except ClientError as exc:
            if exc.code != 409:
                raise UserError(f"{ref.singular}/{meta['name']}: {exc.message}") from None
        obj = client.get(ref, meta["name"], meta["project"])  # changed meanwhile: check the new value again
        meta = obj["metadata"]
    raise UserError(
        f"{ref.singular}/{meta['name']}: changed by others {ATTEMPTS} times while its {field} were changed; try again"
    )


def _run(
    ctx: typer.Context,
    kind: str,
    args: list[str],
    selector: str | None,
    project: str | None,
    overwrite: bool,
    field: str,
    verb: str,
) -> None:
    names, changes = split_arguments(args, field[:-1])
    if field == "annotations":
        for key in changes.sets:
            try:
                check_label_key(key)
            except ValueError as exc:
                raise typer.BadParameter(str(exc).replace("label key", "annotation key"), param_hint="KEY") from None
    if bool(names) == bool(selector):
        raise typer.BadParameter("name the objects, or select them with -l, not both", param_hint="NAME / -l")
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        if selector:
            objects = client.list(ref, config.project, selector).items
            if not objects:
                note(f"No {ref.plural} match {selector!r} in project {config.project!r}.")
                return
        else:
            objects = [client.get(ref, name, config.project) for name in names]
        for name, changed in change_metadata(client, ref, objects, field, changes, overwrite):
            print(f"{ref.singular}/{name} {verb if changed else 'not ' + verb}", flush=True)


_ARGS_HELP = "object names, then changes: KEY=VALUE sets, KEY- removes"


def label(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
    args: list[str] = typer.Argument(
        ..., metavar="[NAME...] KEY=VALUE... KEY-...", help=_ARGS_HELP, autocompletion=complete_name
    ),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label the objects this selector matches"),
    overwrite: bool = typer.Option(False, "--overwrite", help="allow changing a label that already has a value"),
    project: str | None = typer.Option(None, "-p", "--project", help="project [default: from config]"),
) -> None:
    """Set or remove labels: dpufleet label dpu bf3-a rack=r7 tier-"""
    _run(ctx, kind, args, selector, project, overwrite, "labels", "labeled")


def annotate(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
    args: list[str] = typer.Argument(
        ..., metavar="[NAME...] KEY=VALUE... KEY-...", help=_ARGS_HELP, autocompletion=complete_name
    ),
    selector: str | None = typer.Option(None, "-l", "--selector", help="annotate the objects this selector matches"),
    overwrite: bool = typer.Option(False, "--overwrite", help="allow changing an annotation that already has a value"),
    project: str | None = typer.Option(None, "-p", "--project", help="project [default: from config]"),
) -> None:
    """Set or remove annotations: dpufleet annotate dpu bf3-a owner='team a' note-"""
    _run(ctx, kind, args, selector, project, overwrite, "annotations", "annotated")
