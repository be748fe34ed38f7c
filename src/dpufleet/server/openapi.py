"""The OpenAPI document: each kind's schema from its pydantic model, and what failures look like.

Schemas are named after the kinds (`components/schemas/DPU`, `DPUList`, `DPUWatchEvent`, ...), so a
generated client has a type per kind with the models' field descriptions; every operation
documents the `Status` body it answers on failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from ..api.kinds import KindInfo

REF = "#/components/schemas/"

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A failure: the HTTP code, a stable reason and a message naming the cause (and the field)",
    "required": ["apiVersion", "kind", "status", "code", "reason", "message"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string", "enum": ["Status"]},
        "status": {"type": "string", "enum": ["Failure"]},
        "code": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}
LIST_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Where the list stands: the resourceVersion it was read at, and the token of the next page",
    "required": ["resourceVersion"],
    "properties": {
        "resourceVersion": {"type": "string", "description": "watch from here to see every later change"},
        "continue": {
            "type": "string",
            "description": "present when more objects follow: pass it as `continue` to get the next page",
        },
    },
}
EVENT_TYPES = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def object_doc(info: KindInfo, code: int = 200) -> dict[str, Any]:
    """An operation answering the object: its schema under the success code."""
    return {
        "responses": {
            str(code): {
                "description": f"the {info.kind} as stored",
                "content": {"application/json": {"schema": _ref(info.kind)}},
            }
        }
    }


def body_doc(info: KindInfo, *, patch: bool = False, status: bool = False) -> dict[str, Any]:
    if patch:
        what = f"{info.kind}'s status" if status else info.kind
        schema: dict[str, Any] = {
            "type": "object",
            "description": f"a JSON merge patch (RFC 7386) of the {what}: the fields to set, null to remove one",
        }
        if status:
            schema["properties"] = {"status": {"type": "object"}}
        content = {"application/merge-patch+json": {"schema": schema}, "application/json": {"schema": schema}}
    else:
        schema = _ref(f"{info.kind}StatusUpdate" if status else info.kind)
        content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def list_doc(info: KindInfo) -> dict[str, Any]:
    return {
        "responses": {
            "200": {
                "description": f"the {info.kind} objects, in project and name order",
                "content": {"application/json": {"schema": _ref(f"{info.kind}List")}},
            }
        }
    }


def watch_doc(info: KindInfo) -> dict[str, Any]:
    return {
        "x-dpufleet-stream": True,
        "responses": {
            "200": {
                "description": "a stream of newline-delimited JSON events, one per line (ADDED, MODIFIED, "
                "DELETED; a BOOKMARK at least every 10 s and when the stream ends at timeoutSeconds; "
                "ERROR with a Status, code 410, when the watch must re-list)",
                "content": {"application/x-ndjson": {"schema": _ref(f"{info.kind}WatchEvent")}},
            }
        },
    }


def kind_schemas(kinds: Iterable[KindInfo]) -> dict[str, dict[str, Any]]:
    """components/schemas for the kinds: `<Kind>` (the model, in validation mode, descriptions kept),
    `<Kind>List`, `<Kind>StatusUpdate` and `<Kind>WatchEvent`, and the models they refer to."""
    kinds = list(kinds)
    refs, top = models_json_schema([(info.model, "validation") for info in kinds], ref_template=REF + "{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    renames: dict[str, str] = {}
    for info in kinds:
        name = refs[(info.model, "validation")]["$ref"].removeprefix(REF)
        if name != info.kind and info.kind not in defs:
            renames[name] = info.kind
    if renames:  # the schema takes the kind's name (ProjectResource -> Project), and every $ref follows
        text = orjson.dumps(defs).decode()
        for old, new in renames.items():
            text = text.replace(f'"{REF}{old}"', f'"{REF}{new}"')
        defs = orjson.loads(text)
        for old, new in renames.items():
            defs[new] = defs.pop(old)
    for info in kinds:
        name = renames.get(refs[(info.model, "validation")]["$ref"].removeprefix(REF), info.kind)
        if name != info.kind:
            defs[info.kind] = _ref(name)
        schema = defs.get(name, {})
        defs[f"{info.kind}List"] = {
            "type": "object",
            "description": f"A page of {info.kind} objects",
            "required": ["apiVersion", "kind", "metadata", "items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string", "enum": [f"{info.kind}List"]},
                "metadata": _ref("ListMeta"),
                "items": {"type": "array", "items": _ref(info.kind)},
            },
        }
        defs[f"{info.kind}WatchEvent"] = {
            "type": "object",
            "description": f"One line of a {info.plural} watch: the object after the change (before it, for "
            "DELETED); a BOOKMARK carries only metadata.resourceVersion; an ERROR carries a Status",
            "required": ["type", "object"],
            "properties": {"type": {"type": "string", "enum": EVENT_TYPES}, "object": {"type": "object"}},
        }
        if info.has_status:
            status = (schema.get("properties") or {}).get("status", {"type": "object"})
            defs[f"{info.kind}StatusUpdate"] = {
                "type": "object",
                "description": f"The new status of a {info.kind}; metadata.resourceVersion, if given, is a precondition",
                "required": ["status"],
                "properties": {
                    "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string"}}},
                    "status": status,
                },
            }
    defs["ListMeta"] = LIST_META_SCHEMA
    return defs


def document_failures(schema: dict[str, Any], kinds: Iterable[KindInfo] = ()) -> dict[str, Any]:
    """Make the OpenAPI say what the server really answers: the kinds' schemas, and a Status for any 4xx.

    FastAPI documents its own 422 validation body, which this server never sends (request
    validation answers 400 with a Status); every operation may answer 400-404, 409, 410, 413,
    415 or 422, all as a Status. A watch answers NDJSON only.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(kind_schemas(kinds))
    components["Status"] = STATUS_SCHEMA
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    schema["components"].setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    failure = {
        "description": "Failure: a Status naming the cause",
        "content": {"application/json": {"schema": _ref("Status")}},
    }
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            responses["4XX"] = failure
            if operation.pop("x-dpufleet-stream", False):
                responses["200"]["content"].pop("application/json", None)
    return schema
