"""`dpufleet apply -f`: reading manifests (files, directories, stdin) and applying them in order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from .. import API_VERSION
from ..api.errors import APIError
from ..api.validation import validate_document
from ..client import Client, ClientError
from .common import UserError, note, options
from .output import print_document

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Manifest:
    """One document and where it came from, for error messages."""

    source: str
    index: int  # 1-based position in its file
    doc: dict[str, Any]

    @property
    def label(self) -> str:
        kind = self.doc.get("kind") or "?"
        name = (self.doc.get("metadata") or {}).get("name") or "?"
        return f"{self.source}: doc {self.index} ({kind}/{name})"


def manifest_files(path: str) -> list[tuple[str, str]]:
    """(source name, text) for a file, every manifest of a directory (sorted), or stdin for '-'."""
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MANIFEST_SUFFIXES)
        if not files:
            raise UserError(f"{path}: no *.yaml, *.yml or *.json files in this directory")
    elif p.exists():
        files = [p]
    else:
        raise UserError(f"{path}: no such file or directory")
    out = []
    for f in files:
        try:
            out.append((str(f), f.read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{f}: cannot read: {exc}") from None
    return out


def parse_manifests(source: str, text: str) -> list[Manifest]:
    """Every document of a multi-document YAML (or JSON) text; `kind: List` documents are expanded."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{source}: {where}invalid YAML: {problem}") from None
    manifests: list[Manifest] = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise UserError(f"{source}: doc {index}: expected a mapping with apiVersion, kind and metadata")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                if not isinstance(item, dict):
                    raise UserError(f"{source}: doc {index}: every item of a List must be a mapping")
                manifests.append(Manifest(source, index, item))
        else:
            manifests.append(Manifest(source, index, doc))
    return manifests


def load(paths: list[str]) -> list[Manifest]:
    """Read and parse everything first, so a typo in the last file applies nothing."""
    manifests: list[Manifest] = []
    for path in paths:
        for source, text in manifest_files(path):
            manifests.extend(parse_manifests(source, text))
    return manifests


DRY_RUN_MODES = ("none", "server", "client")


def apply_all(
    client: Client, manifests: list[Manifest], project: str | None, *, dry_run: bool = False, output: str | None = None
) -> None:
    """Apply in order; stop at the first document the server refuses (those before it stay applied).

    With dry_run the server answers what it would store and writes nothing (so nothing stays
    applied). With output (yaml or json) the stored objects are printed instead of one line each.
    """
    results = []
    for done, manifest in enumerate(manifests):
        try:
            obj, outcome = client.apply(manifest.doc, project, dry_run=dry_run)
        except ClientError as exc:
            if done and not dry_run:
                note(f"note: the {done} document(s) before this one were applied")
            raise UserError(f"{manifest.label}: {exc.message}") from None
        results.append(obj)
        if output is None:
            ref = client.resolve_kind(obj["kind"])
            suffix = " (server dry run)" if dry_run else ""
            print(f"{ref.singular}/{obj['metadata']['name']} {outcome}{suffix}", flush=True)
    _print_objects(results, output)


def check_locally(manifests: list[Manifest], project: str, output: str | None) -> None:
    """--dry-run=client: each document validated against this client's kind registry; nothing is sent."""
    results = []
    for manifest in manifests:
        doc = dict(manifest.doc)
        meta = doc.get("metadata")
        if isinstance(meta, dict) and not meta.get("project"):
            doc["metadata"] = {**meta, "project": project}
        try:
            info, obj = validate_document(doc)
        except APIError as exc:
            raise UserError(f"{manifest.label}: {exc.message}") from None
        results.append(obj)
        if output is None:
            print(f"{info.singular}/{obj['metadata']['name']} valid (client dry run)", flush=True)
    _print_objects(results, output)


def _print_objects(objects: list[dict[str, Any]], output: str | None) -> None:
    if output is None:
        return
    if len(objects) == 1:
        print_document(objects[0], output)
    else:
        print_document({"apiVersion": API_VERSION, "kind": "List", "metadata": {}, "items": objects}, output)


def apply(
    ctx: typer.Context,
    filename: list[str] = typer.Option(
        ..., "-f", "--filename", help="a YAML/JSON file, a directory of them, or - for stdin (repeatable)"
    ),
    project: str | None = typer.Option(
        None, "-p", "--project", help="project for documents that name none [default: from config]"
    ),
    dry_run: str = typer.Option(
        "none",
        "--dry-run",
        help="server: the server checks everything and answers what it would store, writing nothing; "
        "client: check the documents here only, sending nothing",
    ),
    output: str | None = typer.Option(None, "-o", "--output", help="yaml or json: print the (would-be) stored objects"),
) -> None:
    """Create or update objects from manifests (multi-document YAML or JSON)."""
    if dry_run not in DRY_RUN_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(DRY_RUN_MODES)}", param_hint="'--dry-run'")
    if output not in (None, "yaml", "json"):
        raise typer.BadParameter("must be yaml or json", param_hint="'-o' / '--output'")
    manifests = load(filename)
    if not manifests:
        raise UserError(f"{', '.join(filename)}: no documents to apply")
    opts = options(ctx)
    config = opts.config(project)
    if dry_run == "client":
        check_locally(manifests, config.project, output)
        return
    with Client.from_config(config) as client:
        apply_all(client, manifests, config.project, dry_run=dry_run == "server", output=output)
