"""Rollups: one metric's latest values summed up per host, vendor, model, DPUSet or label value, from what the
aggregator holds (``DPUSeries.latest``) and what it knows of each DPU (the DPU follower's ``DPUFacts``).

A group's figures are over every matching series of its DPUs (the metric, carrying every attribute asked
for): how many DPUs and series, their sum, least, mean and most. A value older than the alerts' stale limit
is left out, as a DPU that fell silent is not at its last value. A DPU in several DPUSets counts in each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..api.selectors import LabelSelector
from .telemetry_alerts import STALE_SECONDS, DPUFacts, Latest

BY = ("host", "vendor", "model", "dpuset", "label:<key>")


@dataclass
class _Group:
    dpus: set[str] = field(default_factory=set)
    values: list[float] = field(default_factory=list)


def parse_by(text: str) -> str:
    """``host``, ``vendor``, ``model``, ``dpuset`` or ``label:<key>``; ValueError naming the choices."""
    value = text.strip()
    if value in BY[:4] or (value.startswith("label:") and len(value) > len("label:")):
        return value
    raise ValueError(f"{text!r} is not one of {', '.join(BY)}")


def parse_match(values: Iterable[str]) -> dict[str, str]:
    """``key=value`` pairs (comma-separated or repeated); ValueError naming the bad one."""
    found: dict[str, str] = {}
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, wanted = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{part!r} is not key=value")
            found[key.strip()] = wanted.strip()
    return found


def rollup(
    dpus: Iterable[DPUFacts],
    series_of: Callable[[str], tuple[str, Latest] | None],
    metric: str,
    match: dict[str, str],
    by: str,
    dpusets: dict[str, LabelSelector],
    now: float,
) -> list[dict[str, Any]]:
    """The groups, sorted by name; ``dpusets``: each DPUSet's selector (for ``by=dpuset``)."""
    groups: dict[str, _Group] = {}
    wanted = tuple(match.items())
    fresh_after = (now - STALE_SECONDS) * 1000
    for facts in dpus:
        found = series_of(facts.serial)
        if found is None or found[0] != facts.project:
            continue
        values = [
            value for (name, attrs), (value, taken, _) in found[1].items()
            if name == metric and taken >= fresh_after and all(item in attrs for item in wanted)
        ]  # fmt: skip
        if not values:
            continue
        for key in _keys(facts, by, dpusets):
            group = groups.setdefault(key, _Group())
            group.dpus.add(facts.name)
            group.values.extend(values)
    return [
        {"group": key, "dpus": len(g.dpus), "series": len(g.values), "sum": sum(g.values), "min": min(g.values),
         "mean": sum(g.values) / len(g.values), "max": max(g.values)}
        for key, g in sorted(groups.items())
    ]  # fmt: skip


def _keys(facts: DPUFacts, by: str, dpusets: dict[str, LabelSelector]) -> list[str]:
    if by == "host":
        return [facts.host or "(no host)"]
    if by == "vendor":
        return [facts.vendor or "(unknown)"]
    if by == "model":
        return [facts.model or "(unknown)"]
    if by == "dpuset":
        return [name for name, selector in dpusets.items() if selector.matches(facts.labels)] or ["(none)"]
    return [facts.labels.get(by.removeprefix("label:"), "(unset)")]
