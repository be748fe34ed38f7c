"""A BMC's TelemetryService MetricReports (Redfish 2018.2 onwards): many sensors' readings in one
document, where the BMC offers them, instead of a request per sensor.

A report's MetricValues name the property each value was read from (MetricProperty: a Sensor's URI, or a
legacy Thermal/Power array entry's JSON pointer) and carry the value as a string, with a Timestamp; a
report may hold several values of one property over time (the latest counts), values that are not
numbers ("OK", "nan", ""), and properties of other chassis or of statistics no reading is (an average
over an hour). Only numbers of properties the caller knows as readings are taken: the sensors' crawl
(sensors.py) says what each property measures, the reports only how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .client import RedfishClient, RedfishError
from .sensors import metric_source


@dataclass(frozen=True)
class ReportedValue:
    value: float
    timestamp: datetime | None


def _number(text: Any) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        value = float(text)
    elif isinstance(text, str):
        try:
            value = float(text.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _stamp(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _keep_latest(found: dict[str, ReportedValue], key: str, seen: ReportedValue) -> None:
    """A value replaces the one kept unless it is older (a value without a time replaces none that has one)."""
    before = found.get(key)
    if before is None or (
        seen.timestamp is not None and (before.timestamp is None or seen.timestamp >= before.timestamp)
    ):
        found[key] = seen


def report_values(report: dict[str, Any]) -> dict[str, ReportedValue]:
    """Property (metric_source) -> its latest numeric value in one MetricReport."""
    found: dict[str, ReportedValue] = {}
    for entry in report.get("MetricValues") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("MetricProperty"), str):
            continue
        value = _number(entry.get("MetricValue"))
        if value is None:
            continue
        _keep_latest(
            found, metric_source(entry["MetricProperty"]), ReportedValue(value, _stamp(entry.get("Timestamp")))
        )
    return found


async def metric_reports(client: RedfishClient) -> list[str]:
    """The URIs of the MetricReports the BMC offers; [] where it has no TelemetryService (or it is off)."""
    root = await client.get("/redfish/v1", anonymous=True)
    service_path = client.link(root, "TelemetryService")
    if service_path is None:
        return []
    try:
        service = await client.get(service_path)
    except RedfishError as exc:
        if exc.status in (404, 501):
            return []
        raise
    if service.get("ServiceEnabled") is False:
        return []
    collection = client.link(service, "MetricReports")
    if collection is None:
        return []
    listing = await client.get(collection)
    return [
        str(m["@odata.id"])
        for m in listing.get("Members") or []
        if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)
    ]


async def read_reports(client: RedfishClient, reports: list[str]) -> dict[str, ReportedValue]:
    """Every report's values, merged: the latest value of each property across them."""
    merged: dict[str, ReportedValue] = {}
    for path in reports:
        for key, seen in report_values(await client.get(path)).items():
            _keep_latest(merged, key, seen)
    return merged
