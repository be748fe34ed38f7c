"""Evaluating the column paths of the kind registry, and formatting cells and ages.

A path is dotted fields, each optionally followed by one bracket:

    spec.hostRef                        a field
    spec.components[*].name             every element of a list, then a field of each
    spec.components[0].name             one element by index
    status.conditions[Ready].status     the element whose `type` (or `name`) is Ready
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

NONE = "<none>"
_SEGMENT = re.compile(r"^(?P<field>[^\[\]]*)(?:\[(?P<index>[^\]]*)\])?$")
_TIME_LEAVES = ("Timestamp", "Time", "lastSeen")


class PathError(ValueError):
    pass


def _split(path: str) -> list[tuple[str, str | None]]:
    segments: list[tuple[str, str | None]] = []
    for part in path.split("."):
        m = _SEGMENT.match(part)
        if not m or (not m.group("field") and m.group("index") is None):
            raise PathError(f"bad column path {path!r} at {part!r}")
        segments.append((m.group("field"), m.group("index")))
    return segments


def _select(value: Any, index: str) -> Any:
    if not isinstance(value, list):
        return None
    if index.lstrip("-").isdigit():
        i = int(index)
        return value[i] if -len(value) <= i < len(value) else None
    for item in value:
        if isinstance(item, dict) and (item.get("type") == index or item.get("name") == index):
            return item
    return None


def evaluate(doc: Any, path: str) -> Any:
    """The value at path, a list when the path has `[*]`, None when any step is missing."""
    values: list[Any] = [doc]
    many = False
    for name, index in _split(path):
        step: list[Any] = []
        for value in values:
            if name:
                value = value.get(name) if isinstance(value, dict) else None
            if index == "*":
                many = True
                if isinstance(value, list):
                    step.extend(value)
            elif index is not None:
                step.append(_select(value, index))
            else:
                step.append(value)
        values = step
    if many:
        return [v for v in values if v is not None]
    return values[0] if values else None


def parse_time(text: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl-style short age: 45s, 3m, 5h, 12d, 2y."""
    if not timestamp:
        return NONE
    stamp = parse_time(timestamp)
    if stamp is None:
        return timestamp
    seconds = max(0, int(((now or datetime.now(UTC)) - stamp).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


def cell(value: Any) -> str:
    """A value as a table cell: lists joined by commas, booleans lower-case, missing as <none>."""
    if value is None or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def column_cell(doc: dict[str, Any], path: str) -> str:
    """Evaluate and format; timestamps (paths ending in ...Timestamp, ...Time, lastSeen) become ages."""
    value = evaluate(doc, path)
    if isinstance(value, str) and path.endswith(_TIME_LEAVES):
        return age(value)
    return cell(value)
