"""`dpufleet diff -f FILE|DIR`: what `apply` would change, as a unified diff per object.

The right-hand side is what the server would store: its answer to a dry-run apply, with its
defaults and admission applied. A server without dry run gets a prediction made here instead:
the live object with the document's spec and metadata, validated by this client's models for
their defaults. Status and the metadata the store assigns (resourceVersion, generation, uid,
creationTimestamp) are left out of both sides: they change on every write and are not yours.
Exit status as kubectl's: 0 no differences, 1 differences, 2 (or more) an error.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

import typer
import yaml

from ..api.errors import APIError
from ..api.validation import validate_document
from ..client import Client, ClientError, comparable
from .apply import Manifest, load
from .common import UserError, options

EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2
KEPT_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def _text(obj: dict[str, Any] | None) -> list[str]:
    if obj is None:
        return []
    dumped = yaml.safe_dump(comparable(obj), sort_keys=True, default_flow_style=False, allow_unicode=True)
    return dumped.splitlines(keepends=True)


def predict(live: dict[str, Any] | None, doc: dict[str, Any], project: str) -> dict[str, Any]:
    """What apply makes of doc, without the server: its spec and metadata over the live object's."""
    meta = {**(doc.get("metadata") or {}), "project": project}
    meta.pop("resourceVersion", None)
    if live is not None:
        for key in KEPT_METADATA:
            if key not in meta and key in live["metadata"]:
                meta[key] = live["metadata"][key]
    body = {k: v for k, v in doc.items() if k != "status"}
    body["metadata"] = meta
    try:
        _, merged = validate_document(body)
    except APIError as exc:
        raise UserError(exc.message) from None
    return merged


def merged_object(
    client: Client, manifest: Manifest, project: str
) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """(label, live object or None, what applying the document would make it)."""
    doc = manifest.doc
    if not isinstance(doc.get("kind"), str) or not doc["kind"]:
        raise UserError("kind: required field is missing")
    ref = client.resolve_kind(doc["kind"])
    meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    name = str(meta.get("name") or "")
    if not name:
        raise UserError("metadata.name: required field is missing")
    where = str(meta.get("project") or project)
    try:
        live: dict[str, Any] | None = client.get(ref, name, where)
    except ClientError as exc:
        if exc.code != 404:
            raise
        live = None
    if client.supports_dry_run():
        merged, _ = client.apply(doc, where, dry_run=True)
    else:
        merged = predict(live, doc, where)
    return f"{where}/{ref.singular}/{name}", live, merged


def diff(
    ctx: typer.Context,
    filename: list[str] = typer.Option(
        ..., "-f", "--filename", help="a YAML/JSON file, a directory of them, or - for stdin (repeatable)"
    ),
    project: str | None = typer.Option(
        None, "-p", "--project", help="project for documents that name none [default: from config]"
    ),
) -> None:
    """Show what apply -f would change, live against merged; exit 1 when anything differs, 0 when nothing does."""
    different = False
    try:
        config = options(ctx).config(project)
        manifests = load(filename)
        if not manifests:
            raise UserError(f"{', '.join(filename)}: no documents to compare")
        with Client.from_config(config) as client:
            for manifest in manifests:
                try:
                    label, live, merged = merged_object(client, manifest, config.project)
                except (ClientError, UserError) as exc:
                    message = exc.message if isinstance(exc, ClientError) else str(exc)
                    raise UserError(f"{manifest.label}: {message}") from None
                lines = list(difflib.unified_diff(_text(live), _text(merged), f"live/{label}", f"merged/{label}"))
                if lines:
                    different = True
                    sys.stdout.writelines(lines)
                    sys.stdout.flush()
    except UserError as exc:
        raise UserError(str(exc), EXIT_TROUBLE) from None
    except ClientError as exc:
        raise UserError(exc.message, EXIT_TROUBLE) from None
    if different:
        raise typer.Exit(EXIT_DIFFERENT)
