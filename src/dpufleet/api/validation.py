"""Turning untrusted documents into normalised, validated ones, with errors that name the field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .. import API_VERSION
from .errors import BadRequest, Invalid
from .kinds import KindInfo, UnknownKind, lookup
from .meta import dump


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe_errors(exc: ValidationError, prefix: str = "") -> tuple[str, list[dict[str, str]]]:
    causes = []
    for err in exc.errors():
        path = field_path(tuple(err["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        causes.append({"field": path, "message": msg})
    summary = "; ".join(f"{c['field']}: {c['message']}" for c in causes)
    return summary, causes


def validate_document(doc: Any, *, kind: KindInfo | None = None) -> tuple[KindInfo, dict[str, Any]]:
    """Validate a user document against its kind's model and return the normalised form.

    Raises BadRequest when it is not an object or names an unknown kind or apiVersion,
    Invalid (with details.causes) when fields are wrong.
    """
    if not isinstance(doc, dict):
        raise BadRequest(f"a resource must be a mapping, got {type(doc).__name__}")
    doc_kind = doc.get("kind")
    if kind is None:
        if not isinstance(doc_kind, str) or not doc_kind:
            raise Invalid("kind: required field is missing", {"causes": [{"field": "kind", "message": "missing"}]})
        try:
            kind = lookup(doc_kind)
        except UnknownKind as exc:
            raise BadRequest(str(exc)) from None
        if doc_kind != kind.kind:
            raise BadRequest(f"kind: {doc_kind!r} is not a kind; did you mean {kind.kind!r}?")
    elif doc_kind is not None and doc_kind != kind.kind:
        raise BadRequest(f"kind: document is a {doc_kind!r} but this endpoint serves {kind.kind!r}")
    api_version = doc.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise BadRequest(f"apiVersion: {api_version!r} is not served; use {API_VERSION!r}")
    body = dict(doc)
    body.setdefault("kind", kind.kind)
    body.setdefault("apiVersion", API_VERSION)
    try:
        model = kind.model.model_validate(body)
    except ValidationError as exc:
        summary, causes = describe_errors(exc)
        raise Invalid(f"{kind.kind} is invalid: {summary}", {"kind": kind.kind, "causes": causes}) from None
    return kind, dump(model)


def validate_status(kind: KindInfo, status: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate only a status (the status subresource).

    `base`: the stored status this one was made from (validated when it was written). Only the
    top-level fields that differ from it are validated again; the result is the same as validating
    the whole (the status models check each field on its own), for a fraction of the time: a
    controller's write changes a few fields of a large status (a DPU's firmware, evidence,
    capabilities and conditions are most of it)."""
    if not kind.has_status:
        raise BadRequest(f"{kind.kind} has no status")
    field = kind.model.model_fields["status"]
    annotation = field.annotation
    assert annotation is not None
    if base is not None and isinstance(status, dict) and not annotation.__pydantic_decorators__.model_validators:
        changed = {k: v for k, v in status.items() if k not in base or base[k] != v}
        try:
            dumped = dump(annotation.model_validate(changed))
        except ValidationError:
            pass  # said by the whole validation below, as for any status
        else:
            kept = {k: v for k, v in base.items() if k in status and k not in changed}
            kept.update((k, dumped[k]) for k in changed if k in dumped)
            return kept
    try:
        model = annotation.model_validate(status if status is not None else {})
    except ValidationError as exc:
        summary, causes = describe_errors(exc, "status")
        raise Invalid(f"{kind.kind} status is invalid: {summary}", {"causes": causes}) from None
    result: dict[str, Any] = dump(model)
    return result
