"""`dpufleet explain KIND[.field[.field...]]`: what a kind's fields are, from its schema.

The schema is the server's when it publishes one (`components/schemas/<Kind>` in /openapi.json:
a newer server may have fields, or kinds, this client does not know), else the kind registry's
pydantic model built into this client. Both are JSON Schema; `$ref`s are followed within the
document they come from.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer

from .. import API_VERSION
from ..api.kinds import REGISTRY, UnknownKind, lookup
from ..client import Client, ClientError
from .common import UserError, options
from .completion import complete_kind

SCHEMA_TIMEOUT = 5.0
INDENT = "    "


@dataclass(frozen=True)
class Schema:
    """A schema and the document its `$ref`s point into."""

    node: dict[str, Any]
    root: dict[str, Any]

    def deref(self) -> Schema:
        """Follow `$ref`, a single-element allOf, and `anyOf [X, null]` (an optional field) down to X."""
        node, seen = self.node, 0
        while seen < 32:
            seen += 1
            if "$ref" in node:
                merged = {k: v for k, v in node.items() if k != "$ref"}
                node = {**_pointer(self.root, str(node["$ref"])), **merged}
            elif len(node.get("allOf") or ()) == 1:
                node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
            elif "anyOf" in node and len(_not_null(node["anyOf"])) == 1:
                node = {**_not_null(node["anyOf"])[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            else:
                break
        return Schema(node, self.root)

    def child(self, node: Any) -> Schema:
        return Schema(node if isinstance(node, dict) else {}, self.root)

    def fields(self) -> dict[str, Schema]:
        """Named fields: an object's properties, or those of a list's elements (kubectl's `spec.items.x`)."""
        node = self.deref()
        while node.node.get("type") == "array" and isinstance(node.node.get("items"), dict):
            node = node.child(node.node["items"]).deref()
        props = node.node.get("properties")
        return {k: node.child(v) for k, v in props.items()} if isinstance(props, dict) else {}

    def required(self) -> set[str]:
        node = self.deref()
        while node.node.get("type") == "array" and isinstance(node.node.get("items"), dict):
            node = node.child(node.node["items"]).deref()
        return set(node.node.get("required") or ())

    def type_name(self) -> str:
        node = self.deref().node
        alternatives = _not_null(node.get("anyOf") or node.get("oneOf") or [])
        if alternatives:
            return "|".join(dict.fromkeys(self.child(a).type_name() for a in alternatives))
        kind = node.get("type")
        if isinstance(kind, list):
            return "|".join(str(k) for k in kind if k != "null")
        if kind == "array":
            return "[]" + self.child(node.get("items")).type_name()
        if kind == "object" or "properties" in node:
            extra = node.get("additionalProperties")
            if not node.get("properties") and isinstance(extra, dict):
                return "map[string]" + self.child(extra).type_name()
            return "Object"
        if kind:
            return str(kind)
        return "Object" if node.get("properties") else "any"

    def description(self) -> str:
        node = self.deref().node
        lines = [str(node.get("description") or "").strip()]
        values = node.get("enum") or ([node["const"]] if "const" in node else [])
        if values:
            lines.append("Allowed values: " + ", ".join(str(v) for v in values))
        if "default" in node and node["default"] not in (None, [], {}):
            lines.append("Default: " + json.dumps(node["default"]))
        return "\n".join(line for line in lines if line)


def _not_null(options: list[Any]) -> list[dict[str, Any]]:
    return [o for o in options if isinstance(o, dict) and o.get("type") != "null"]


def _pointer(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def kind_schema(client: Client, kind: str) -> tuple[str, Schema]:
    """(Kind, schema): the server's published schema when it has this kind, else the built-in one.

    A server that cannot be reached, or publishes no schema for the kind, is no error when this
    client knows the kind itself: explaining works offline from the built-in registry.
    """
    try:
        known: str | None = lookup(kind).kind
    except UnknownKind:
        known = None
    try:
        name = known or client.resolve_kind(kind).kind
        doc = client.openapi()
        published = ((doc.get("components") or {}).get("schemas") or {}).get(name)
        if isinstance(published, dict) and published.get("properties"):
            return name, Schema(published, doc)
    except ClientError:
        if known is None:
            raise
    if known is None:
        raise UserError(f"the server serves {name} but publishes no schema for it in /openapi.json")
    schema = REGISTRY[known].model.model_json_schema()
    return known, Schema(schema, schema)


def resolve_field(kind: str, top: Schema, path: list[str]) -> Schema:
    """The schema at kind.path, or a UserError naming the first field that does not exist and the valid ones."""
    node, walked = top, [kind]
    for part in path:
        fields = node.fields()
        if part not in fields:
            where = ".".join(walked)
            valid = ", ".join(fields) if fields else f"none ({where} is {node.type_name()})"
            raise UserError(f"field {part!r} does not exist in {where}; valid fields: {valid}")
        node = fields[part]
        walked.append(part)
    return node


def render(kind: str, path: list[str], node: Schema) -> str:
    out = [f"KIND:     {kind}", f"VERSION:  {API_VERSION}"]
    if path:
        out.append(f"FIELD:    {'.'.join(path)} <{node.type_name()}>")
    out += ["", "DESCRIPTION:"]
    described = node.description()
    out += [INDENT + line for line in (described.splitlines() or ["<empty>"])]
    fields = node.fields()
    if fields:
        required = node.required()
        out += ["", "FIELDS:"]
        width = max(len(name) for name in fields) + 2
        for name, sub in fields.items():
            flag = "  -required-" if name in required else ""
            out.append(f"  {name.ljust(width)}<{sub.type_name()}>{flag}")
            out += [INDENT + "  " + line for line in sub.description().splitlines()]
    return "\n".join(out) + "\n"


def explain(
    ctx: typer.Context,
    target: str = typer.Argument(
        ...,
        metavar="KIND[.FIELD...]",
        help="a kind and optionally a field path: dpu, dpu.spec, dpu.spec.image",
        autocompletion=complete_kind,
    ),
) -> None:
    """Describe a kind's fields (types, descriptions, allowed values), like kubectl explain."""
    kind, *path = target.split(".")
    if not kind or any(not part for part in path):
        raise typer.BadParameter(f"{target!r}: expected KIND or KIND.field.field", param_hint="'KIND[.FIELD...]'")
    config = options(ctx).config()
    with Client.from_config(config, timeout=SCHEMA_TIMEOUT) as client:
        name, top = kind_schema(client, kind)
    node = resolve_field(name, top, path)
    sys.stdout.write(render(name, path, node))
