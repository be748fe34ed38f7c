"""Query parameters of the resource routes, parsed into what the store takes; a bad one is a 400
that names the parameter (and never reaches the store)."""

from __future__ import annotations

import base64
import binascii

import orjson

from ..api.errors import BadRequest
from ..api.kinds import KindInfo
from ..api.selectors import FieldSelector, LabelSelector, SelectorError, parse_field_selector, parse_selector

MAX_RV = 2**63 - 1  # the database's integer range
MAX_LIMIT = 10_000  # objects in one page; leave limit out for the whole list in one answer
WATCH_TIMEOUT_DEFAULT = 300  # seconds a watch streams when timeoutSeconds is left out
WATCH_TIMEOUT_MAX = 3600
DRY_RUN_ALL = "All"


def label_selector(text: str | None) -> LabelSelector | None:
    if not text:
        return None
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise BadRequest(f"labelSelector: {exc}") from None


def field_selector(text: str | None) -> FieldSelector | None:
    if not text:
        return None
    try:
        selector = parse_field_selector(text)
    except SelectorError as exc:
        raise BadRequest(f"fieldSelector: {exc}") from None
    return None if selector.is_empty() else selector


def resource_version(value: str | None) -> int | None:
    if value in (None, "", "0"):
        return None
    assert value is not None
    if not value.isascii() or not value.isdigit() or int(value) > MAX_RV:
        raise BadRequest(f"resourceVersion {value!r} must be a non-negative integer (at most {MAX_RV})")
    return int(value)


def dry_run(value: str | None) -> bool:
    """Kubernetes' dryRun: `All` runs every step of the write but the commit; absent writes."""
    if value is None:
        return False
    if value != DRY_RUN_ALL:
        raise BadRequest(f"dryRun {value!r}: the only value is {DRY_RUN_ALL!r} (leave it out to write)")
    return True


def encode_continue(info: KindInfo, project: str | None, key: tuple[str, str]) -> str:
    """The opaque token of the next page: the last key returned, bound to the kind and project listed."""
    body = orjson.dumps({"k": info.kind, "s": project, "p": key[0], "n": key[1]})
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_continue(token: str | None, info: KindInfo, project: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        body = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise BadRequest("continue: not a token this server gave (pass metadata.continue of the last page)") from None
    if not isinstance(body, dict) or not isinstance(body.get("p"), str) or not isinstance(body.get("n"), str):
        raise BadRequest("continue: not a token this server gave (pass metadata.continue of the last page)")
    if body.get("k") != info.kind or body.get("s") != project:
        raise BadRequest(f"continue: the token belongs to another listing, not of {info.plural} in this scope")
    return body["p"], body["n"]
