"""`dpufleet edit KIND NAME`: the object's YAML in $VISUAL/$EDITOR, replaced on save.

The replace carries the resourceVersion that was read, so if anyone changed the object while
the editor was open the server refuses with a conflict instead of the edit silently undoing
their change. Status belongs to controllers and is left out of the file. Whatever goes wrong
after the editor closed (bad YAML, a field the server refuses, a conflict), the edited text is
kept in a file whose path the error names, so no typing is lost.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import typer
import yaml

from ..client import Client, ClientError
from .common import UserError, note, options
from .completion import complete_kind, complete_name
from .output import to_yaml

CANCELLED = "Edit cancelled, no changes made."
HEADER = """\
# Please edit the object below. Lines beginning with '#' are ignored;
# an empty file cancels the edit. Status is written by controllers and is left out.
# Saving replaces the object if it is still at resourceVersion {rv}.
"""


def editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else vi; split like a shell would ("code --wait" works)."""
    raw = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        raise UserError(f"$EDITOR {raw!r}: {exc}") from None
    if not words:
        raise UserError("$EDITOR is empty")
    return words


def _run_editor(path: Path) -> None:
    command = editor_command()
    try:
        result = subprocess.run([*command, str(path)], check=False)
    except OSError as exc:
        raise UserError(f"cannot start the editor {command[0]!r}: {exc.strerror or exc}; set $EDITOR") from None
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        raise UserError(f"the editor {command[0]!r} exited with status {result.returncode}; no changes made")


def editable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def _read_edit(path: Path) -> dict[str, Any] | None:
    """The edited document, None when the file is empty (only comments and blank lines)."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    if not text.strip():
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise UserError("the edited file must hold one mapping with apiVersion, kind, metadata and spec")
    return doc


def _check_identity(before: dict[str, Any], after: dict[str, Any]) -> None:
    meta = after.get("metadata")
    if not isinstance(meta, dict):
        raise UserError("metadata: required field is missing")
    for field, value in (("kind", after.get("kind")), ("metadata.name", meta.get("name"))):
        was = before["kind"] if field == "kind" else before["metadata"]["name"]
        if value != was:
            raise UserError(f"{field}: cannot be changed by edit (was {was!r}, now {value!r})")
    if meta.get("project", before["metadata"]["project"]) != before["metadata"]["project"]:
        raise UserError(f"metadata.project: cannot be changed by edit (was {before['metadata']['project']!r})")


def edit(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="kind, plural or short name", autocompletion=complete_kind),
    name: str = typer.Argument(..., help="object name", autocompletion=complete_name),
    project: str | None = typer.Option(None, "-p", "--project", help="project of the object [default: from config]"),
) -> None:
    """Edit an object in $VISUAL or $EDITOR (default vi) and replace it on save, unless someone changed it meanwhile."""
    config = options(ctx).config(project)
    with Client.from_config(config) as client:
        ref = client.resolve_kind(kind)
        obj = client.get(ref, name, config.project)
        rv = str(obj["metadata"].get("resourceVersion") or "")
        original = editable(obj)
        fd, tmp = tempfile.mkstemp(prefix=f"dpufleet-edit-{ref.singular}-{name}-", suffix=".yaml")
        path = Path(tmp)
        with os.fdopen(fd, "w") as fh:
            fh.write(HEADER.format(rv=rv) + to_yaml(original))
        _run_editor(path)
        try:
            edited = _read_edit(path)
            if edited is None or edited == original:
                path.unlink(missing_ok=True)
                note(CANCELLED)
                return
            _check_identity(obj, edited)
            edited["metadata"]["resourceVersion"] = rv  # the version this edit started from, whatever the file says
            client.update(edited, config.project)
        except (UserError, ClientError) as exc:
            message = exc.message if isinstance(exc, ClientError) else str(exc)
            raise UserError(f"{ref.singular}/{name}: {message}; your edit is kept in {path}") from None
    path.unlink(missing_ok=True)
    print(f"{ref.singular}/{name} edited", flush=True)
