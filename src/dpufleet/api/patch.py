"""JSON merge patch (RFC 7386), and copying JSON documents."""

from __future__ import annotations

import copy
from typing import Any

import orjson


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON document (dicts, lists, strings, numbers, booleans, None): a round trip
    through orjson, about ten times faster than `copy.deepcopy` on a DPU's status (issue 15's profile:
    deep copies were a twentieth of the control plane's work in a rollout). Anything that is not
    JSON is copied by `copy.deepcopy`."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        return copy.deepcopy(value)


def merge_patch(target: Any, patch: Any) -> Any:
    """Return target with patch applied; neither argument is modified, and the result shares nothing
    with either.

    A dict in the patch merges key by key, a null deletes the key, anything else
    (lists included) replaces the value.
    """
    if not isinstance(patch, dict):
        return json_copy(patch)
    result: dict[str, Any] = json_copy(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result


def _merge_into(result: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply `patch` to `result` (a copy the caller owns) in place: one copy of the target, not one per level."""
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            inner = result.get(key)
            if not isinstance(inner, dict):
                inner = result[key] = {}
            _merge_into(inner, value)
        else:
            result[key] = json_copy(value)
