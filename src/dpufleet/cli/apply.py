"""`dpufleet apply -f`: reading manifests (files, directories, stdin) and applying them in order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from ..client import Client, ClientError
from .common import UserError, note, options

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


def apply_all(client: Client, manifests: list[Manifest], project: str | None) -> None:
    """Apply in order; stop at the first document the server refuses (those before it stay applied)."""
    for done, manifest in enumerate(manifests):
        try:
            obj, outcome = client.apply(manifest.doc, project)
        except ClientError as exc:
            if done:
                note(f"note: the {done} document(s) before this one were applied")
            raise UserError(f"{manifest.label}: {exc.message}") from None
        ref = client.resolve_kind(obj["kind"])
        print(f"{ref.singular}/{obj['metadata']['name']} {outcome}", flush=True)


def apply(
    ctx: typer.Context,
    filename: list[str] = typer.Option(
        ..., "-f", "--filename", help="a YAML/JSON file, a directory of them, or - for stdin (repeatable)"
    ),
    project: str | None = typer.Option(
        None, "-p", "--project", help="project for documents that name none [default: from config]"
    ),
) -> None:
    """Create or update objects from manifests (multi-document YAML or JSON)."""
    manifests = load(filename)
    if not manifests:
        raise UserError(f"{', '.join(filename)}: no documents to apply")
    opts = options(ctx)
    config = opts.config(project)
    with Client.from_config(config) as client:
        apply_all(client, manifests, config.project)
